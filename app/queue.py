"""Queueing Celery tasks from a web request without stalling it on a broker that is down.

Celery's Redis transport retries a refused connection for about two seconds per task.
After one failure this process stops trying for BROKER_DOWN_SECONDS: callers have their
fallbacks (the cache TTL, the job reaper, the revocation check's PostgreSQL path).
"""

from __future__ import annotations

import logging
import time

from flask import current_app

log = logging.getLogger(__name__)

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
