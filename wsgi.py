"""The WSGI entry point: gunicorn (`wsgi:app`) and `flask` (FLASK_APP=wsgi) load it."""

from app.config import ConfigError, refuse_to_start
from app.factory import create_app

# gunicorn's exit code for "worker failed to boot": its master then stops rather than
# booting the worker again (gunicorn.conf.py refuses earlier, in the master)
WORKER_BOOT_ERROR = 3

try:
    app = create_app()
except ConfigError as error:
    refuse_to_start(error, WORKER_BOOT_ERROR)
