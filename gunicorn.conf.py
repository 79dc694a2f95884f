"""gunicorn settings, every one overridable from the environment."""

import multiprocessing
import os

# all interfaces by default: inside a container or behind a platform router
bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '5000')}"  # noqa: S104
workers = int(os.environ.get("WEB_CONCURRENCY", min(4, multiprocessing.cpu_count() * 2)))
# threads per worker (gunicorn's gthread worker when more than one): a thread waiting on a
# password hash (PASSWORD_HASHES_PER_PROCESS) or a slow client leaves the others serving
threads = int(os.environ.get("WEB_THREADS", "8"))
# well above DB_POOL_TIMEOUT, so a request waiting for a connection gets its 503, not a kill
timeout = int(os.environ.get("WEB_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("WEB_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("WEB_KEEPALIVE", "5"))
# recycle workers now and then (a guard against slow leaks); the wide jitter keeps them
# from restarting together, which stalls every request for the second a worker boots
max_requests = int(os.environ.get("WEB_MAX_REQUESTS", "50000"))
max_requests_jitter = int(os.environ.get("WEB_MAX_REQUESTS_JITTER", "25000"))
# the app logs one JSON line per request (with its request id); no second access log
accesslog = os.environ.get("WEB_ACCESS_LOG") or None
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# the app is imported in each worker after fork: no connection pool is shared across forks
preload_app = False
# gunicornc's control socket (show workers, add or kill them, reload, shut down) only where
# asked for: gunicorn's default place, ~/.gunicorn/gunicorn.ctl, is one per user, so a
# second gunicorn of that user takes it over from the first, and the image's user cannot
# create it (its home, /app, belongs to root)
control_socket = os.environ.get("WEB_CONTROL_SOCKET", "")
control_socket_disable = not control_socket

# /metrics adds up every worker's numbers: prometheus-client's multiprocess mode
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="postboard-metrics-")


def on_starting(server):
    # refused settings stop the master here, before it forks: one line and exit 1 (else
    # every worker prints it as it fails to load the app, and then the master stops)
    from app.config import ConfigError, load, refuse_to_start

    try:
        load()
    except ConfigError as error:
        refuse_to_start(error)

    # numbers left by an earlier run must not be added to this one's
    import glob

    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(path)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    # the app is loaded and what it loaded lives as long as the worker: frozen, those
    # objects drop out of the collector's full passes, which otherwise stop every thread
    # of the worker while they walk them all
    import gc

    gc.collect()
    gc.freeze()
