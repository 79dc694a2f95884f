"""The Celery worker and beat: `celery -A worker worker|beat` reads `worker.celery`.

The Flask app, and with it its Celery app (app/background.py), is created on first use
of `worker.celery`, so importing this package (or worker.tasks) builds nothing.
"""

from __future__ import annotations

from app.config import ConfigError, refuse_to_start
from app.factory import create_app
from worker import tasks  # noqa: F401  (registers the tasks with every Celery app)


def __getattr__(name: str):
    """`worker.celery`, built on first use."""
    if name == "celery":
        global celery
        try:
            flask_app = create_app()
        except ConfigError as error:
            refuse_to_start(error)  # one line, not celery's traceback
        celery = flask_app.extensions["celery"]
        celery.set_default()
        return celery
    raise AttributeError(name)
