"""Queueing Celery tasks from a web request without stalling it on a broker that is down.

Celery's Redis transport retries a refused connection for about two seconds per task.
After one failure this process stops trying for BROKER_DOWN_SECONDS: callers have their
fallbacks (the cache TTL, the job reaper, the revocation check's PostgreSQL path).

Every task's name is here, once, with the queue it goes to: web processes send tasks by
name without importing the worker, and worker/tasks.py registers them under these names.
Short tasks take milliseconds whatever the data; long ones grow with it. Each queue has
its own worker process (Procfile), so a short task never waits behind a long one.
"""

from __future__ import annotations

import logging
import time

from flask import current_app

log = logging.getLogger(__name__)

SHORT = "short"  # cache invalidation, the revocation mirror, queueing jobs, mail
LONG = "long"  # jobs (import, export, recount, account deletion) and purges
QUEUES = (SHORT, LONG)

REBUILD_REVOCATION_MIRROR = "worker.tasks.rebuild_revocation_mirror"
SYNC_REVOCATION_MIRROR = "worker.tasks.sync_revocation_mirror"
PURGE_EXPIRED_REVOCATIONS = "worker.tasks.purge_expired_revocations"
INVALIDATE_CACHE = "worker.tasks.invalidate_cache"
INVALIDATE_AUTHOR_POSTS = "worker.tasks.invalidate_author_posts"
DROP_FOLLOWER_FEEDS = "worker.tasks.drop_follower_feeds"
POSTS_CHANGED = "worker.tasks.posts_changed"
RUN_JOB = "worker.tasks.run_job"
REQUEUE_STALE_JOBS = "worker.tasks.requeue_stale_jobs"
NIGHTLY_RECOUNT = "worker.tasks.nightly_recount"
PURGE_EXPIRED_RESULTS = "worker.tasks.purge_expired_results"
PURGE_FAILED_UPLOADS = "worker.tasks.purge_failed_uploads"
SEND_MAIL = "worker.tasks.send_mail"
REQUEUE_UNSENT_MAIL = "worker.tasks.requeue_unsent_mail"

# Celery's task_routes; a task missing here goes to task_default_queue (LONG)
ROUTES = {
    REBUILD_REVOCATION_MIRROR: {"queue": SHORT},
    SYNC_REVOCATION_MIRROR: {"queue": SHORT},
    INVALIDATE_CACHE: {"queue": SHORT},
    INVALIDATE_AUTHOR_POSTS: {"queue": SHORT},
    # a read of the followers and deletes in batches: a post must not wait behind a job
    DROP_FOLLOWER_FEEDS: {"queue": SHORT},
    POSTS_CHANGED: {"queue": SHORT},  # what a request could not do after its commit
    REQUEUE_STALE_JOBS: {"queue": SHORT},  # it only queues the jobs again
    NIGHTLY_RECOUNT: {"queue": SHORT},  # it only records the job; the recount runs on LONG
    # one mail to the SMTP server, bounded by MAIL_TIMEOUT_SECONDS: a reset link must not
    # wait behind a long job
    SEND_MAIL: {"queue": SHORT},
    REQUEUE_UNSENT_MAIL: {"queue": SHORT},
    RUN_JOB: {"queue": LONG},
    PURGE_EXPIRED_REVOCATIONS: {"queue": LONG},
    PURGE_EXPIRED_RESULTS: {"queue": LONG},
    PURGE_FAILED_UPLOADS: {"queue": LONG},
}

BROKER_DOWN_SECONDS = 10
_broker = {"down_until": 0.0}


def send(name: str, args: list | None = None, *, countdown: float | None = None) -> bool:
    """Queue task `name`; False (and logged) when the broker cannot take it now."""
    if time.monotonic() < _broker["down_until"]:
        log.warning("broker marked down; not queueing %s", name)
        return False
    try:
        current_app.extensions["celery"].send_task(name, args=args or [], countdown=countdown)
        return True
    except Exception as exc:
        mark_broker_down()
        log.error("could not queue %s (%s)", name, exc)
        return False


def mark_broker_down() -> None:
    """Skip queueing for a while (also called when the broker's Redis just failed us)."""
    _broker["down_until"] = time.monotonic() + BROKER_DOWN_SECONDS
