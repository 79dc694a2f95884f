"""The Celery app, bound to the Flask app: every task runs inside an app context.

`celery -A worker worker` and `celery -A worker beat` load this module.
"""

from __future__ import annotations

from celery import Celery, Task
from celery.schedules import crontab
from celery.signals import worker_process_init
from flask import Flask


def make_celery(flask_app: Flask) -> Celery:
    class AppContextTask(Task):
        def __call__(self, *args, **kwargs):
            with flask_app.app_context():
                return self.run(*args, **kwargs)

    cfg = flask_app.config
    # longer than the longest job, or Redis redelivers a running task to a second worker
    visibility_timeout = 6 * 3600
    celery = Celery(flask_app.import_name, task_cls=AppContextTask)
    celery.conf.update(
        broker_url=cfg["CELERY_BROKER_URL"],
        result_backend=cfg["CELERY_RESULT_BACKEND"],
        broker_transport_options={"visibility_timeout": visibility_timeout},
        result_backend_transport_options={"visibility_timeout": visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_expires=24 * 3600,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        beat_schedule={
            "recount-counters-nightly": {
                "task": "worker.tasks.recount_counters",
                "schedule": crontab(hour=3, minute=30),
            },
        },
    )
    celery.set_default()
    flask_app.extensions["celery"] = celery

    @worker_process_init.connect(weak=False)
    def _fresh_pool_after_fork(**_kwargs):
        # a forked child must not share the parent's PostgreSQL connections
        with flask_app.app_context():
            from app.extensions import db

            db.engine.dispose(close=False)

    return celery


def _default_app() -> Celery:
    from app import create_app

    return make_celery(create_app())


celery = _default_app()

from worker import tasks  # noqa: E402,F401  (registers the tasks)
