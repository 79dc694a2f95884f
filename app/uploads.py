"""A cap on the uploads a web host reads at once, so its other workers keep serving.

A sync gunicorn worker serves one request at a time: a cap per process would never
refuse anything, and four large uploads would still take all four workers. So the
processes of one host share the count in Redis (a sorted set of holders, keyed by the
host's name; each holder stamped with its start, so the slot of a process killed
mid-upload frees itself after UPLOADS_IN_FLIGHT_TTL_SECONDS). While Redis is down each
process counts on its own: the cap loosens, as the rate limits do, but does not vanish.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from flask import current_app
from redis.exceptions import RedisError

from app.errors import ServiceUnavailable
from app.redis_store import redis_store

log = logging.getLogger(__name__)

KEY = f"uploads:in-flight:{socket.gethostname()}"

_local = {"count": 0}
_local_lock = threading.Lock()


@contextlib.contextmanager
def slot() -> Iterator[None]:
    """Hold one of the host's upload slots for the block; 503 when none is free.

    Taken before the request body is read, so a refused upload costs its worker nothing.
    """
    limit = current_app.config["UPLOADS_IN_FLIGHT_MAX"]
    token = f"{os.getpid()}:{uuid.uuid4().hex}"
    shared = _take_shared(token, limit)
    taken = _take_local(limit) if shared is None else shared
    if not taken:
        raise ServiceUnavailable(
            f"The server is taking in {limit} uploads already; retry shortly.",
            headers={"Retry-After": str(current_app.config["RETRY_AFTER_SECONDS"])},
        )
    try:
        yield
    finally:
        if shared is None:
            with _local_lock:
                _local["count"] -= 1
        else:
            _give_back_shared(token)


def _take_shared(token: str, limit: int) -> bool | None:
    """Whether a slot was free in Redis (None: Redis did not answer)."""
    ttl = current_app.config["UPLOADS_IN_FLIGHT_TTL_SECONDS"]
    now = time.time()
    try:
        pipe = redis_store.client.pipeline(transaction=True)
        pipe.zremrangebyscore(KEY, "-inf", now - ttl)
        pipe.zadd(KEY, {token: now})
        pipe.zrank(KEY, token)
        pipe.expire(KEY, ttl)
        rank = pipe.execute()[2]
        if rank < limit:
            return True
        redis_store.client.zrem(KEY, token)
        return False
    except RedisError as exc:
        log.warning("upload slots: Redis unavailable (%s); counting in this process", exc)
        return None


def _give_back_shared(token: str) -> None:
    try:
        redis_store.client.zrem(KEY, token)
    except RedisError as exc:  # the slot frees itself after its TTL
        log.warning("upload slots: could not give a slot back (%s)", exc)


def _take_local(limit: int) -> bool:
    with _local_lock:
        if _local["count"] >= limit:
            return False
        _local["count"] += 1
        return True
