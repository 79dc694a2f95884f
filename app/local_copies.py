"""Each process's copies of Redis keys it has read, kept exact by Redis itself, so a read
that found a copy costs no round trip. Used by the profile/post cache (app/cache.py)
and the revocation check (app/auth/revocation.py).

This is Redis's server-assisted client-side caching in broadcasting mode: one
connection of the process's own asks Redis (CLIENT TRACKING ... BCAST PREFIX) to report
every write, delete, expiry or flush of a key under the given prefixes, and receives the
reports itself (REDIRECT to its own id, subscribed to __redis__:invalidate; RESP2, Redis
6 or later). Since every change is reported, even the absence of a key can be kept.
Each read first applies the reports that have arrived (a non-blocking poll). Redis
writes the reports of an event-loop pass before that pass's replies, so once a write
has been answered, its report is already on its way to every process: no process that
reads afterwards serves the old copy.

redis-py's own client-side cache is not used: it refuses servers older than 7.4 (the
embedded one is 6.2, Debian 12's 7.0) and still takes a pooled connection on every hit.

Copies are trusted only while the reporting connection is up: when it drops (Redis
restarted, network) the process forgets them all and reads from Redis until it has
opened it again (tried at most once a second). CACHE_LOCAL_TTL_SECONDS bounds a copy's
life should the connection die without a sign.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time

from cachetools import TTLCache
from redis.exceptions import RedisError, ResponseError

log = logging.getLogger(__name__)

CHANNEL = "__redis__:invalidate"
UNKNOWN = object()  # no copy held (a held None means: the key does not exist)


def _size(value: bytes | None) -> int:
    return 64 + (len(value) if value is not None else 0)  # ~ the entry's own overhead


class LocalCopies:
    RETRY_SECONDS = 1.0
    # a server or proxy that refuses CLIENT TRACKING is asked again only this rarely
    REFUSED_RETRY_SECONDS = 60.0

    def __init__(self, client, prefixes: tuple[str, ...], max_bytes: int, ttl: int):
        self.client = client
        self.prefixes = prefixes
        # least recently used copies go first once the room (bytes, roughly) is full
        self.copies = TTLCache(max_bytes, ttl, getsizeof=_size)
        self.lock = threading.Lock()
        self.listener = None  # the connection the reports arrive on, while it is up
        self.poller = None  # polls the listener's socket
        self.generation = 0  # moves whenever reports may have been missed
        self.retry_at = 0.0
        self.pid = os.getpid()

    def mget(self, keys: list[str], *, keep_missing: bool = False) -> list[bytes | None]:
        """Like MGET: copies where held, the rest from Redis in one round trip, kept
        (missing keys too when `keep_missing`). Raises RedisError as MGET does."""
        values, generation = self.lookup(keys)
        wanted = [i for i, value in enumerate(values) if value is UNKNOWN]
        if wanted:
            fetched = self.client.mget([keys[i] for i in wanted])
            read = {}
            for i, value in zip(wanted, fetched, strict=True):
                values[i] = value
                if value is not None or keep_missing:
                    read[keys[i]] = value
            self.keep(read, generation)
        return values

    def lookup(self, keys: list[str]) -> tuple[list, int | None]:
        """The copies held for `keys` (UNKNOWN where none) and the generation to hand
        back to keep(); all UNKNOWN and None while reports cannot be received."""
        with self.lock:
            if not self._apply_reports():
                return [UNKNOWN] * len(keys), None
            copies, values = self.copies, []
            with copies.timer:  # one clock reading for every key (TTLCache.get reads it twice a key)
                for key in keys:
                    try:
                        values.append(copies[key])
                    except KeyError:  # none held, or expired
                        values.append(UNKNOWN)
            return values, self.generation

    def keep(self, values: dict[str, bytes | None], generation: int | None) -> None:
        """Keep values read from Redis, unless reports were missed since the lookup."""
        with self.lock:
            if generation is None or generation != self.generation or self.listener is None:
                return
            for key, value in values.items():
                if _size(value) <= self.copies.maxsize:
                    self.copies[key] = value

    def close(self) -> None:
        with self.lock:
            self._forget()

    def _apply_reports(self) -> bool:
        if self.listener is None and not self._listen():
            return False
        try:
            # redis-py's can_read tries a read on the socket (three system calls and an
            # exception when nothing came); the poll asks once and mostly finds nothing
            if not self.poller.poll(0):
                return True
            while self.listener.can_read(timeout=0):
                kind, _, keys = self.listener.read_response()
                if kind != b"message":
                    continue
                if keys is None:  # a flush: every key went
                    self.copies.clear()
                else:
                    for key in keys:
                        self.copies.pop(key.decode(), None)
        except (RedisError, OSError, ValueError) as exc:
            log.warning("local copies of %s dropped, change reports interrupted (%s)", self.prefixes, exc)
            self._forget()
            self.retry_at = time.monotonic() + self.RETRY_SECONDS
            return False
        return True

    def _listen(self) -> bool:
        if time.monotonic() < self.retry_at:
            return False
        pool = self.client.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)  # its own, outside the pool
        try:
            connection.connect()
            connection.send_command("CLIENT", "ID")
            own_id = connection.read_response()
            prefixes = [word for prefix in self.prefixes for word in ("PREFIX", prefix)]
            connection.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", own_id, "BCAST", *prefixes)
            connection.read_response()
            connection.send_command("SUBSCRIBE", CHANNEL)
            connection.read_response()
        except (RedisError, OSError) as exc:
            connection.disconnect()
            refused = isinstance(exc, ResponseError)
            self.retry_at = time.monotonic() + (self.REFUSED_RETRY_SECONDS if refused else self.RETRY_SECONDS)
            hint = "; set CACHE_LOCAL_MAX_BYTES=0 for a Redis that cannot track keys" if refused else ""
            log.warning("no local copies of %s for now (%s)%s", self.prefixes, exc, hint)
            return False
        self.copies.clear()
        self.generation += 1
        self.listener = connection
        self.poller = select.poll()
        self.poller.register(connection._sock, select.POLLIN)
        return True

    def _forget(self) -> None:
        self.copies.clear()
        self.generation += 1
        if self.listener is not None:
            self.listener.disconnect()
            self.listener = self.poller = None


def for_app(app, name: str, client, prefixes: tuple[str, ...]) -> LocalCopies | None:
    """The app's LocalCopies called `name` for `client` in this process (a forked child,
    or a new client, gets new ones); None when CACHE_LOCAL_MAX_BYTES is 0."""
    if app.config["CACHE_LOCAL_MAX_BYTES"] <= 0:
        return None
    local = app.extensions.get(name)
    if local is None or local.pid != os.getpid() or local.client is not client:
        if local is not None and local.pid == os.getpid():
            local.close()
        local = app.extensions[name] = LocalCopies(
            client, prefixes, app.config["CACHE_LOCAL_MAX_BYTES"], app.config["CACHE_LOCAL_TTL_SECONDS"]
        )
    return local
