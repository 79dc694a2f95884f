"""Celery bound to the Flask app (Flask's "Background Tasks with Celery" pattern): every
task runs inside an app context, and the app keeps its Celery app in
`app.extensions["celery"]`, which web processes queue tasks with (app/queue.py).

The signal handlers are registered once per process (dispatch_uid): a process runs one
app; tests that build several keep the first's. The worker process's entry point is
worker/__init__.py; the tasks are in worker/tasks.py.
"""

from __future__ import annotations

from celery import Celery, Task
from celery.schedules import crontab
from celery.signals import (
    before_task_publish,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_process_init,
    worker_ready,
)
from flask import Flask
from kombu import Exchange, Queue

from app import queue
from app.db import db
from app.logs import configure_logging, current_request_id, task_request_id

# longer than the longest job, or Redis redelivers a running task to a second worker
VISIBILITY_TIMEOUT = 6 * 3600


def celery_init_app(flask_app: Flask) -> Celery:
    """A Celery app for `flask_app`, kept in its extensions."""

    class AppContextTask(Task):
        def __call__(self, *args, **kwargs):
            with flask_app.app_context():
                return self.run(*args, **kwargs)

    cfg = flask_app.config
    redis_timeouts = {
        "socket_timeout": max(cfg["REDIS_SOCKET_TIMEOUT"], 2.0),
        "socket_connect_timeout": max(cfg["REDIS_SOCKET_TIMEOUT"], 2.0),
    }
    celery = Celery(flask_app.import_name, task_cls=AppContextTask)
    celery.conf.update(
        broker_url=cfg["CELERY_BROKER_URL"],
        result_backend=cfg["CELERY_RESULT_BACKEND"],
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT, **redis_timeouts},
        result_backend_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT, **redis_timeouts},
        # a request that queues a task while the broker is down fails fast (the callers
        # fall back: the TTL, or the reaper) instead of retrying for seconds
        task_publish_retry=False,
        broker_connection_timeout=1,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_expires=24 * 3600,
        # short tasks and long jobs on queues of their own, each with its own worker
        # (Procfile); a worker started without -Q consumes both
        task_queues=[Queue(name, Exchange(name), routing_key=name) for name in queue.QUEUES],
        task_routes=queue.ROUTES,
        task_default_queue=queue.LONG,  # a task nobody routed must not hold up the short queue
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        beat_schedule=_beat_schedule(flask_app),
    )
    flask_app.extensions["celery"] = celery
    _carry_request_ids()
    _keep_worker_processes_sound(flask_app, celery)
    return celery


def _beat_schedule(flask_app: Flask) -> dict:
    return {
        "recount-counters-nightly": {
            "task": queue.NIGHTLY_RECOUNT,
            "schedule": crontab(hour=3, minute=30),
        },
        "requeue-stale-jobs": {
            "task": queue.REQUEUE_STALE_JOBS,
            "schedule": float(flask_app.config["JOB_REAPER_INTERVAL_SECONDS"]),
        },
        "sync-revocation-mirror": {"task": queue.SYNC_REVOCATION_MIRROR, "schedule": 60.0},
        "purge-expired-revocations": {
            "task": queue.PURGE_EXPIRED_REVOCATIONS,
            "schedule": crontab(minute=15),
        },
        "purge-expired-job-results": {
            "task": queue.PURGE_EXPIRED_RESULTS,
            "schedule": crontab(minute=40),
        },
        "requeue-unsent-mail": {"task": queue.REQUEUE_UNSENT_MAIL, "schedule": 60.0},
        "purge-failed-import-uploads": {
            "task": queue.PURGE_FAILED_UPLOADS,
            "schedule": crontab(minute=45),
        },
    }


def _keep_worker_processes_sound(flask_app: Flask, celery: Celery) -> None:
    @worker_ready.connect(weak=False, dispatch_uid="postboard-requeue-on-ready")
    def _pick_up_abandoned_jobs(**_kwargs):
        # a worker that starts after a crash takes over what the dead one left
        celery.send_task(queue.REQUEUE_STALE_JOBS)

    @worker_process_init.connect(weak=False, dispatch_uid="postboard-fresh-pool")
    def _fresh_pool_after_fork(**_kwargs):
        # a forked child must not share the parent's PostgreSQL connections
        with flask_app.app_context():
            db.engine.dispose(close=False)

    @setup_logging.connect(weak=False, dispatch_uid="postboard-logging")
    def _our_logging(**_kwargs):
        # Celery would install its own handlers; the worker logs as the web does
        configure_logging(flask_app.config["LOG_LEVEL"], flask_app.config["LOG_FORMAT"])


def _carry_request_ids() -> None:
    """The id of the request that queued a task goes with it and into its log lines."""

    @before_task_publish.connect(weak=False, dispatch_uid="postboard-stamp-request-id")
    def _stamp(headers=None, **_kwargs):
        request_id = current_request_id()
        if headers is not None and request_id and "request_id" not in headers:
            headers["request_id"] = request_id

    @task_prerun.connect(weak=False, dispatch_uid="postboard-enter-request-id")
    def _enter(task=None, **_kwargs):
        task.request_id_token = task_request_id.set(getattr(task.request, "request_id", None))

    @task_postrun.connect(weak=False, dispatch_uid="postboard-leave-request-id")
    def _leave(task=None, **_kwargs):
        token = getattr(task, "request_id_token", None)
        if token is not None:
            task_request_id.reset(token)
