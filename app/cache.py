"""The Redis cache of public views: a user's profile, a user's newest posts (as listed by
/users?include=posts) and a post with its author.

Keys are versioned (`user:v1:{id}`, `user:v1:{id}:recent-posts`, `post:v1:{id}`) and live
CACHE_TTL_SECONDS. Only what anyone may see is cached (never email, role, `/me` or admin
views). Writers delete the
key right after their transaction commits, so the next read on any process is fresh;
a delete that fails is retried by a Celery task, and the TTL bounds staleness if even
that cannot run. A delete also leaves a short tombstone, so a reader that loaded the row
before the write cannot put the old version back.

Every Redis call is guarded: with Redis down, reads go to PostgreSQL and writes succeed.
Hits and misses are counted by each process and added to shared counters in Redis
once a second at most (see _Tally).

Each process also keeps copies of the entries it has read (see LocalCopies): Redis
itself reports every change to a cached key, so a copy is dropped before the next read
and a hit costs no round trip. Writers and the TTL work on Redis only; the copies follow.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from cachetools import TTLCache
from flask import current_app
from redis.exceptions import RedisError, ResponseError

from app import queue

log = logging.getLogger(__name__)

HITS = "cache:stats:hits"
MISSES = "cache:stats:misses"
TOMBSTONE_SECONDS = 5

TALLY_SECONDS = 1.0


class _Tally:
    """This process's hits and misses, added to the shared counters in Redis by the first
    cache read after a second has passed (and by `stats()`): reads stay plain GET / MGET
    (counting in the same round trip took a Lua script on every read). The shared
    counters lag by the counts of the last second of each process: an idle process
    keeps them until its next read, one that exits drops them.
    """

    def __init__(self, client):
        self.client = client
        self.lock = threading.Lock()
        self.hits = self.misses = 0
        self.due = time.monotonic() + TALLY_SECONDS

    def add(self, hits: int, misses: int) -> None:
        with self.lock:
            self.hits += hits
            self.misses += misses
            due = time.monotonic() >= self.due
        if due:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            hits, misses, self.hits, self.misses = self.hits, self.misses, 0, 0
            self.due = time.monotonic() + TALLY_SECONDS
        if not hits and not misses:
            return
        try:
            self.client.pipeline(transaction=False).incrby(HITS, hits).incrby(MISSES, misses).execute()
        except RedisError as exc:
            log.warning("cache counts kept for later (%s)", exc)
            with self.lock:
                self.hits += hits
                self.misses += misses


def _tally() -> _Tally:
    client = _client()
    tally = current_app.extensions.get("cache_tally")
    if tally is None or tally.client is not client:
        tally = current_app.extensions["cache_tally"] = _Tally(client)
    return tally


# SET each key (KEYS: key, its tombstone, key, its tombstone, ...; ARGV: ttl, values in
# order) unless a writer invalidated it moments ago; one script, not a pipeline of
# scripts (redis-py asks SCRIPT EXISTS before every such pipeline: a second round trip)
_PUT_UNLESS_INVALIDATED = """
local written = 0
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    redis.call('SET', KEYS[i], ARGV[(i + 1) / 2 + 1], 'EX', ARGV[1])
    written = written + 1
  end
end
return written
"""


def profile_key(user_id: int) -> str:
    return f"user:v1:{user_id}"


def recent_posts_key(user_id: int) -> str:
    """A user's newest posts (id, title, time) as listed by /users?include=posts."""
    return f"user:v1:{user_id}:recent-posts"


def post_key(post_id: int) -> str:
    return f"post:v1:{post_id}"


def _client():
    return current_app.extensions["cache_redis"]


def _script(source: str):
    scripts = current_app.extensions.setdefault("cache_scripts", {})
    if source not in scripts:
        scripts[source] = _client().register_script(source)
    return scripts[source]


class LocalCopies:
    """This process's copies of the cache entries it has read, each dropped as soon as
    Redis reports that its key changed, so every read but the first costs no round trip.

    This is Redis's server-assisted client-side caching in broadcasting mode: one
    connection of the process's own asks Redis (CLIENT TRACKING ... BCAST PREFIX) to
    report every write, delete or expiry of a key under the cache's prefixes, and
    receives the reports itself (REDIRECT to its own id, subscribed to
    __redis__:invalidate; RESP2, Redis >= 6). Each read first applies the reports that
    have arrived, a non-blocking poll: Redis sends a report before it answers the write,
    so a write another process finished is never followed here by its old copy.
    redis-py's own client-side cache is not used: it refuses servers older than 7.4
    (the embedded one is 6.2) and still takes a pooled connection on every hit.

    Copies are trusted only while that connection is up: when it drops (Redis
    restarted, network) they are forgotten and reads go to Redis until it is opened
    again (at most once a second). CACHE_LOCAL_TTL_SECONDS bounds a copy's life should
    the connection die without a sign.
    """

    PREFIXES = ("user:v1:", "post:v1:")
    CHANNEL = "__redis__:invalidate"
    RETRY_SECONDS = 1.0
    # a server or proxy that refuses CLIENT TRACKING is asked again only this rarely
    REFUSED_RETRY_SECONDS = 60.0

    def __init__(self, client, max_bytes: int, ttl: int):
        self.client = client
        # least recently used copies go first once their bytes would pass max_bytes
        self.copies = TTLCache(max_bytes, ttl, getsizeof=len)
        self.lock = threading.Lock()
        self.listener = None  # the connection the reports arrive on, while it is up
        self.generation = 0  # moves whenever reports may have been missed
        self.retry_at = 0.0
        self.pid = os.getpid()

    def lookup(self, keys: list[str]) -> tuple[list[bytes | None], int | None]:
        """The copies held for `keys` (None where there is none) and the generation to
        hand back to keep(); no copies and None while reports cannot be received."""
        with self.lock:
            if not self._apply_reports():
                return [None] * len(keys), None
            copies = self.copies
            return [copies.get(key) for key in keys], self.generation

    def keep(self, values: dict[str, bytes], generation: int | None) -> None:
        """Keep values read from Redis, unless reports were missed since the lookup."""
        with self.lock:
            if generation is None or generation != self.generation or self.listener is None:
                return
            for key, value in values.items():
                if len(value) <= self.copies.maxsize:
                    self.copies[key] = value

    def close(self) -> None:
        with self.lock:
            self._forget()

    def _apply_reports(self) -> bool:
        if self.listener is None and not self._listen():
            return False
        try:
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
            log.warning("cache: local copies dropped, change reports interrupted (%s)", exc)
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
            prefixes = [word for prefix in self.PREFIXES for word in ("PREFIX", prefix)]
            connection.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", own_id, "BCAST", *prefixes)
            connection.read_response()
            connection.send_command("SUBSCRIBE", self.CHANNEL)
            connection.read_response()
        except (RedisError, OSError) as exc:
            connection.disconnect()
            refused = isinstance(exc, ResponseError)
            self.retry_at = time.monotonic() + (self.REFUSED_RETRY_SECONDS if refused else self.RETRY_SECONDS)
            hint = "; set CACHE_LOCAL_MAX_BYTES=0 for a Redis that cannot track keys" if refused else ""
            log.warning("cache: no local copies for now (%s)%s", exc, hint)
            return False
        self.copies.clear()
        self.generation += 1
        self.listener = connection
        return True

    def _forget(self) -> None:
        self.copies.clear()
        self.generation += 1
        if self.listener is not None:
            self.listener.disconnect()
            self.listener = None


def _local() -> LocalCopies | None:
    """This process's LocalCopies of the cache's Redis (a forked child makes its own);
    None when turned off."""
    config = current_app.config
    if config["CACHE_LOCAL_MAX_BYTES"] <= 0:
        return None
    client = _client()
    local = current_app.extensions.get("cache_local")
    if local is None or local.pid != os.getpid() or local.client is not client:
        if local is not None and local.pid == os.getpid():
            local.close()
        local = current_app.extensions["cache_local"] = LocalCopies(
            client, config["CACHE_LOCAL_MAX_BYTES"], config["CACHE_LOCAL_TTL_SECONDS"]
        )
    return local


def get(key: str) -> bytes | None:
    return get_many([key])[0]


def get_many(keys: list[str]) -> list[bytes | None]:
    """Values in the order of `keys` (None where missing): this process's copies first,
    the rest from Redis in one round trip."""
    if not keys:
        return []
    local = _local()
    values, generation = local.lookup(keys) if local else ([None] * len(keys), None)
    missing = [i for i, value in enumerate(values) if value is None]
    if missing:
        try:
            fetched = _client().mget([keys[i] for i in missing])
        except RedisError as exc:
            log.warning("cache read skipped (%s)", exc)
            return values
        found = {}
        for i, value in zip(missing, fetched, strict=True):
            if value is not None:
                values[i] = found[keys[i]] = value
        if local and found:
            local.keep(found, generation)
    hits = len(keys) - values.count(None)
    _tally().add(hits, len(keys) - hits)
    return values


def put_many(entries: list[tuple[str, bytes]]) -> None:
    """put() for several entries, in one round trip."""
    if not entries:
        return
    keys = [name for key, _ in entries for name in (key, f"{key}:tombstone")]
    try:
        ttl = current_app.config["CACHE_TTL_SECONDS"]
        _script(_PUT_UNLESS_INVALIDATED)(keys=keys, args=[ttl, *(payload for _, payload in entries)])
    except RedisError as exc:
        log.warning("cache write skipped (%s)", exc)


def put(key: str, payload: bytes) -> None:
    put_many([(key, payload)])


def invalidate(*keys: str) -> None:
    """Delete keys now; if Redis refuses, a worker retries (the TTL is the last resort)."""
    if not keys:
        return
    try:
        delete_now(keys)
    except RedisError as exc:
        log.warning("cache invalidation failed (%s); queueing a retry", exc)
        if current_app.config["CACHE_REDIS_URL"] == current_app.config["CELERY_BROKER_URL"]:
            queue.mark_broker_down()  # the same Redis just failed: don't wait on it again
        if not queue.send("worker.tasks.invalidate_cache", [list(keys)]):
            log.error("cache invalidation not queued; %s may be stale for at most the TTL", keys)


def delete_now(keys) -> None:
    pipe = _client().pipeline(transaction=False)
    pipe.delete(*keys)
    for key in keys:
        pipe.set(f"{key}:tombstone", 1, ex=TOMBSTONE_SECONDS)
    pipe.execute()


def stats() -> dict:
    """The shared counters, this process's latest counts included."""
    _tally().flush()
    hits, misses = (int(v or 0) for v in _client().mget(HITS, MISSES))
    total = hits + misses
    return {"hits": hits, "misses": misses, "hit_rate": hits / total if total else 0.0}


def clear() -> int:
    """Delete every cached entry and the counters; returns how many keys went."""
    client = _client()
    removed = 0
    for pattern in ("user:v1:*", "post:v1:*"):
        batch = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) == 1000:
                removed += client.delete(*batch)
                batch = []
        if batch:
            removed += client.delete(*batch)
    client.delete(HITS, MISSES)
    return removed
