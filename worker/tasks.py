"""Celery tasks: thin wrappers over the app's service functions."""

from __future__ import annotations

import logging

from celery import shared_task
from sqlalchemy.exc import OperationalError

from app.users import service as users

log = logging.getLogger(__name__)


@shared_task(
    name="worker.tasks.recount_counters",
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=300,
    max_retries=5,
)
def recount_counters() -> dict[str, int]:
    """Nightly repair of the stored post/follower/following counts (idempotent)."""
    corrected = users.recount_counters()
    log.info("recount corrected %s", corrected)
    return corrected
