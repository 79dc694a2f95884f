"""Celery tasks: thin wrappers over the app's service functions. Each is idempotent.

Their names, and the queue each goes to, are in app/queue.py."""

from __future__ import annotations

import logging
import smtplib
import uuid

from celery import shared_task
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError

from app import cache, queue
from app.auth import revocation
from app.jobs import files as job_files
from app.jobs import service as jobs
from app.mail import outbox
from app.posts import service as posts
from app.users import service as users

log = logging.getLogger(__name__)

RETRY = {
    "autoretry_for": (OperationalError, RedisError),
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "max_retries": 5,
}


@shared_task(name=queue.REBUILD_REVOCATION_MIRROR, **RETRY)
def rebuild_revocation_mirror() -> int:
    """Copy every live revocation to Redis and mark the mirror complete."""
    count = revocation.rebuild_mirror()
    log.info("revocation mirror rebuilt: %d entries", count)
    return count


@shared_task(name=queue.SYNC_REVOCATION_MIRROR, **RETRY)
def sync_revocation_mirror() -> int:
    """Every minute: re-mirror recent revocations (a full rebuild if the mirror is not ready)."""
    return revocation.sync_recent()


@shared_task(name=queue.PURGE_EXPIRED_REVOCATIONS, **RETRY)
def purge_expired_revocations() -> dict[str, int]:
    """Hourly: drop revocations and sessions whose tokens have expired anyway."""
    purged = revocation.purge_expired()
    log.info("purged %s", purged)
    return purged


@shared_task(name=queue.INVALIDATE_CACHE, **RETRY)
def invalidate_cache(keys: list[str]) -> None:
    """A cache delete that failed in a web request, retried until Redis answers."""
    cache.delete_now(keys)


@shared_task(name=queue.INVALIDATE_AUTHOR_POSTS, **RETRY)
def invalidate_author_posts(user_id: int) -> int:
    """Drop every cached post of a user whose name (or status) changed."""
    count = users.invalidate_author_posts(user_id)
    log.info("cached posts of user %s dropped", user_id, extra={"posts": count})
    return count


@shared_task(name=queue.DROP_FOLLOWER_FEEDS, **RETRY)
def drop_follower_feeds(author_id: int) -> int:
    """The posts of an account with many followers changed: drop each follower's first
    feed page (posts.service.drop_follower_feeds)."""
    count = posts.drop_follower_feeds(author_id)
    log.info("feeds of the followers of user %s dropped", author_id, extra={"followers": count})
    return count


@shared_task(name=queue.POSTS_CHANGED, **RETRY)
def posts_changed(author_id: int, keys: list[str]) -> None:
    """A request changed an author's posts but could not read the followers to tell
    after its commit (posts.service.posts_changed): done here, retried until it can."""
    posts.posts_changed_now(author_id, *keys)


@shared_task(name=queue.RUN_JOB, **RETRY)
def run_job(job_id: str) -> str | None:
    """Run a job to its end; a second delivery of a finished job does nothing."""
    return jobs.run(uuid.UUID(job_id))


@shared_task(name=queue.REQUEUE_STALE_JOBS, **RETRY)
def requeue_stale_jobs() -> int:
    """Queue again the jobs whose worker died or whose message was lost."""
    return jobs.requeue_stale()


@shared_task(name=queue.PURGE_EXPIRED_RESULTS, **RETRY)
def purge_expired_results() -> int:
    """Hourly: delete result files (exports) past their retention; their jobs stay."""
    purged = job_files.purge_expired_results()
    log.info("expired job results purged", extra={"files": purged})
    return purged


@shared_task(name=queue.PURGE_FAILED_UPLOADS, **RETRY)
def purge_failed_uploads() -> int:
    """Hourly: delete the uploads of imports that failed."""
    purged = job_files.purge_failed_uploads()
    log.info("uploads of failed imports purged", extra={"files": purged})
    return purged


@shared_task(name=queue.NIGHTLY_RECOUNT, **RETRY)
def nightly_recount() -> str | None:
    """The nightly recount, as a job row admins can see."""
    return str(users.start_recount_job().id)


@shared_task(
    name=queue.SEND_MAIL,
    autoretry_for=(OperationalError, RedisError, smtplib.SMTPException, OSError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=outbox.MAX_ATTEMPTS,
)
def send_mail(mail_id: int) -> bool:
    """Send one outbox row; an SMTP server that refuses or is down is tried again later."""
    return outbox.deliver(mail_id)


@shared_task(name=queue.REQUEUE_UNSENT_MAIL, **RETRY)
def requeue_unsent_mail() -> int:
    """Every minute: queue again the mail whose task was lost."""
    return outbox.requeue_unsent()
