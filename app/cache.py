"""The Redis cache of public views: a user's profile, a user's newest posts (as listed by
/users?include=posts), a post with its author, and the first page of the lists read
most (the newest posts, the users, each reader's feed).

Keys are versioned (`user:v1:{id}`, `user:v1:{id}:recent-posts`, `user:v1:{id}:feed.v3`,
`post:v1:{id}`, `list:v1:posts:newest.v2`, `list:v1:users.v2`) and live CACHE_TTL_SECONDS.
Only what anyone may see is cached (never email, role, `/me` or admin views; a feed
page holds ids of public posts). Writers delete the key right after their transaction
commits, so the next read on any process is fresh; a delete that fails is retried by a
Celery task, and the TTL bounds staleness if even that cannot run. A delete also leaves
a short tombstone, so a reader that loaded the row before the write cannot put the old
version back. A first page's reader notes the tombstone before its query and may fill
at once if no write came since (put_unless_written): the readers that follow a write to
a list hit the cache again rather than each running the list's query for the
tombstone's lifetime. The lists hold ids only (each item comes from its own key): a post
created, deleted or imported drops the newest posts and the feed page of each of the
author's followers (posts_changed), or, for an author with FEED_PULL_THRESHOLD followers
or more, moves the author's mark, which every cached feed page of a follower holds
(feed_entry); a follow or unfollow drops the reader's page, a user registered drops the
users, and an account (de)activated drops all of them.

Every Redis call is guarded: with Redis down, reads go to PostgreSQL and writes succeed.
Hits and misses are counted by each process and added to shared counters in Redis
once a second at most (see _Tally).

Each process also keeps copies of the entries it has read (app/local_copies.py): Redis
itself reports every change to a cached key, so a copy is dropped before the next read
and a hit costs no round trip. It keeps the absence of an entry too: while a write's
tombstone refuses the fills, the misses that follow go straight to PostgreSQL, and a
fill or write is reported like any change. A stale absence costs a query, never a
stale answer. Writers and the TTL work on Redis only; the copies follow.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time

from flask import current_app
from redis.exceptions import RedisError

from app import local_copies, queue
from app.config import CACHE_TOMBSTONE_SECONDS
from app.db import READ_ENGINE_CHOOSER

log = logging.getLogger(__name__)

HITS = "cache:stats:hits"
MISSES = "cache:stats:misses"
TOMBSTONE_SECONDS = CACHE_TOMBSTONE_SECONDS

TALLY_SECONDS = 1.0
PREFIXES = ("user:v1:", "post:v1:", "list:v1:")


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


def tombstone_key(key: str) -> str:
    """Outside the prefixes the processes track (app/local_copies.py): no process keeps a
    copy of a tombstone, so none needs to hear of one being set or expiring."""
    return f"tombstone:{key}"


# DEL each key and leave its tombstone (KEYS: the keys, then their tombstones in the same
# order; ARGV: the tombstones' seconds, a value new to this call): one command, whatever
# the number of keys
_DELETE_LEAVING_TOMBSTONES = """
local n = #KEYS / 2
for i = 1, n do
  redis.call('DEL', KEYS[i])
  redis.call('SET', KEYS[n + i], ARGV[2], 'EX', ARGV[1])
end
return n
"""

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


# SET KEYS[1] (ARGV: ttl, value, the tombstone KEYS[2] held when the reader began, '' for
# none) unless a writer has invalidated it since
_PUT_UNLESS_WRITTEN = """
if (redis.call('GET', KEYS[2]) or '') == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
  return 1
end
return 0
"""


# DEL each key that exists and leave its tombstone (KEYS: key, its tombstone, ...; ARGV:
# the tombstone's seconds, a value new to this call); returns how many were deleted
_DELETE_IF_CACHED = """
local deleted = 0
for i = 1, #KEYS, 2 do
  if redis.call('DEL', KEYS[i]) == 1 then
    redis.call('SET', KEYS[i + 1], ARGV[2], 'EX', ARGV[1])
    deleted = deleted + 1
  end
end
return deleted
"""


def profile_key(user_id: int) -> str:
    return f"user:v1:{user_id}"


def recent_posts_key(user_id: int) -> str:
    """A user's newest posts (id, title, time) as listed by /users?include=posts."""
    return f"user:v1:{user_id}:recent-posts"


def post_key(post_id: int) -> str:
    return f"post:v1:{post_id}"


def feed_key(user_id: int) -> str:
    """The first page of a user's feed (ids, after the marks of the pulled authors the
    user follows: feed_entry); dropped for every follower of an author under
    FEED_PULL_THRESHOLD whose posts change, and for the reader on a follow or unfollow.
    (v3: the page is in lines, app/pagination.py's first_entry.)"""
    return f"user:v1:{user_id}:feed.v3"


def newest_posts_key() -> str:
    """The first page of /posts: the newest posts of active authors (ids)."""
    return "list:v1:posts:newest.v2"


def users_key() -> str:
    """The first page of /users: active users by id (ids)."""
    return "list:v1:users.v2"


PULLED_AUTHORS = "feed:pulled-authors"


def feed_mark_key(author_id: int) -> str:
    """The mark of an author whose followers pull their posts (FEED_PULL_THRESHOLD
    followers or more): a new value after each change to the author's posts. A cached
    feed page holds the marks of the pulled authors its reader follows, as they were
    before its query, and is stale once one has moved."""
    return f"user:v1:{author_id}:feed-mark"


# a pulled author's posts changed (KEYS: the pulled set, the author's mark, its tombstone,
# the keys to drop, then their tombstones in the same order; ARGV: the tombstones'
# seconds, a value new to this call, the mark's seconds, the author's id): drop the keys,
# move the mark (leaving its tombstone, for fills from a replica), and return 1 when the
# author has just joined the pulled set
_PULLED_AUTHOR_CHANGED = """
local n = (#KEYS - 3) / 2
for i = 1, n do
  redis.call('DEL', KEYS[3 + i])
  redis.call('SET', KEYS[3 + n + i], ARGV[2], 'EX', ARGV[1])
end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[1])
return redis.call('SADD', KEYS[1], ARGV[4])
"""


def pulled_author_changed(author_id: int, keys) -> bool | None:
    """After a commit that changed the posts of an author whose followers pull them:
    drop `keys` (as invalidate) and move the author's mark, which makes every cached
    feed page holding it stale, in one call. True when the author was not in the pulled
    set yet: pages cached before then hold no mark of theirs, and only a drop of each
    follower's page reaches them. None when Redis refused (the keys' drop is queued)."""
    keys = list(keys)
    mark = feed_mark_key(author_id)
    names = [PULLED_AUTHORS, mark, tombstone_key(mark), *keys, *(tombstone_key(key) for key in keys)]
    # a page lives CACHE_TTL_SECONDS from its fill, which comes after its mark was read;
    # the mark outlives it, so a page cannot outlast a mark it saw as missing
    mark_seconds = 2 * current_app.config["CACHE_TTL_SECONDS"]
    try:
        args = [TOMBSTONE_SECONDS, _new_tombstone(), mark_seconds, author_id]
        return bool(_script(_PULLED_AUTHOR_CHANGED)(keys=names, args=args))
    except RedisError as exc:
        log.warning("pulled author's mark not moved (%s)", exc)
        invalidate(*keys)
        return None


# SET KEYS[1] (ARGV: ttl, value) unless any of the other keys (tombstones) exists
_PUT_UNLESS_ANY = """
if redis.call('EXISTS', unpack(KEYS, 2)) > 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
return 1
"""


def put_feed_page(key: str, entry: bytes, tombstone_before: bytes, pulled: list[int]) -> None:
    """put_unless_written() for a feed page whose reader follows the `pulled` authors.
    With read replicas, also refused while one of their marks moved moments ago: the
    mark noted may be newer than what the replica has replayed."""
    if not pulled or not current_app.extensions.get(READ_ENGINE_CHOOSER):
        put_unless_written(key, entry, tombstone_before)
        return
    tombstones = [tombstone_key(key), *(tombstone_key(feed_mark_key(author)) for author in pulled)]
    try:
        _script(_PUT_UNLESS_ANY)(keys=[key, *tombstones], args=[current_app.config["CACHE_TTL_SECONDS"], entry])
    except RedisError as exc:
        log.warning("cache write skipped (%s)", exc)


NO_MARK = b"-"


def note_feed_fill(key: str) -> tuple[bytes, dict[int, bytes]] | None:
    """What a feed page's reader notes before its query: the page's tombstone (for
    put_unless_written) and the mark of every pulled author; None when Redis cannot
    say (then the page is not cached)."""
    try:
        pipe = _client().pipeline(transaction=False)
        tombstone, pulled = pipe.get(tombstone_key(key)).smembers(PULLED_AUTHORS).execute()
        authors = sorted(int(author) for author in pulled)
        marks = _read_marks(authors)
    except RedisError as exc:
        log.warning("cache read skipped (%s)", exc)
        return None
    return tombstone or b"", dict(zip(authors, marks, strict=True))


def marks_hold(marks: dict[int, bytes]) -> bool:
    """Whether each of these authors' marks is still as noted (False when Redis cannot say)."""
    if not marks:
        return True
    try:
        return _read_marks(list(marks)) == list(marks.values())
    except RedisError as exc:
        log.warning("cache read skipped (%s)", exc)
        return False


def feed_entry(marks: dict[int, bytes], page: bytes) -> bytes:
    """A feed page's cache entry: the marks on its first line (`author:mark ...`), then the page."""
    return b" ".join(b"%d:%s" % (author, mark) for author, mark in marks.items()) + b"\n" + page


def from_feed_entry(entry: bytes) -> tuple[dict[int, bytes], bytes]:
    line, _, page = entry.partition(b"\n")
    marks = {}
    for pair in line.split():
        author, _, mark = pair.partition(b":")
        marks[int(author)] = mark
    return marks, page


def _read_marks(authors: list[int]) -> list[bytes]:
    """The authors' marks (NO_MARK where none), from this process's copies where held."""
    if not authors:
        return []
    keys = [feed_mark_key(author) for author in authors]
    local = _local()
    values = local.mget(keys, keep_missing=True) if local else _client().mget(keys)
    return [value or NO_MARK for value in values]


def _client():
    return current_app.extensions["cache_redis"]


def _script(source: str):
    scripts = current_app.extensions.setdefault("cache_scripts", {})
    if source not in scripts:
        scripts[source] = _client().register_script(source)
    return scripts[source]


def _local():
    return local_copies.for_app(current_app, "cache_local", _client(), PREFIXES)


def get(key: str) -> bytes | None:
    return get_many([key])[0]


def get_many(keys: list[str]) -> list[bytes | None]:
    """Values in the order of `keys` (None where missing): this process's copies first,
    the rest from Redis in one round trip."""
    if not keys:
        return []
    values = _read_many(keys)
    hits = len(keys) - values.count(None)
    _tally().add(hits, len(keys) - hits)
    return values


def _read_many(keys: list[str]) -> list[bytes | None]:
    """get_many() without counting: None for each key when Redis cannot answer."""
    local = _local()
    try:
        return local.mget(keys, keep_missing=True) if local else _client().mget(keys)
    except RedisError as exc:
        log.warning("cache read skipped (%s)", exc)
        return [None] * len(keys)


def feed_page(key: str) -> bytes | None:
    """The page cached under a feed key (feed_entry) while every mark it holds is as it
    was noted; a page holding a moved mark is stale, and counts as a miss."""
    (entry,) = _read_many([key])
    page = None
    if entry is not None:
        marks, page = from_feed_entry(entry)
        if not marks_hold(marks):
            page = None
    _tally().add(int(page is not None), int(page is None))
    return page


def put_many(entries: list[tuple[str, bytes]]) -> None:
    """put() for several entries, in one round trip."""
    if not entries:
        return
    keys = [name for key, _ in entries for name in (key, tombstone_key(key))]
    try:
        ttl = current_app.config["CACHE_TTL_SECONDS"]
        _script(_PUT_UNLESS_INVALIDATED)(keys=keys, args=[ttl, *(payload for _, payload in entries)])
    except RedisError as exc:
        log.warning("cache write skipped (%s)", exc)


def put(key: str, payload: bytes) -> None:
    put_many([(key, payload)])


def tombstone_now(key: str) -> bytes | None:
    """The tombstone `key` has now (b"" for none; None when Redis cannot say), for
    put_unless_written: read before the query whose result the reader will put."""
    try:
        return _client().get(tombstone_key(key)) or b""
    except RedisError as exc:
        log.warning("cache read skipped (%s)", exc)
        return None


def put_unless_written(key: str, payload: bytes, tombstone_before: bytes | None) -> None:
    """put(), refused only when a writer has invalidated `key` since the reader noted
    `tombstone_before` (tombstone_now): writers invalidate after their commit, so a
    query that began after the note saw the write. With read replicas, as put(): a
    replica may not have replayed the write yet."""
    if tombstone_before is None or current_app.extensions.get(READ_ENGINE_CHOOSER):
        put(key, payload)
        return
    try:
        ttl = current_app.config["CACHE_TTL_SECONDS"]
        _script(_PUT_UNLESS_WRITTEN)(keys=[key, tombstone_key(key)], args=[ttl, payload, tombstone_before])
    except RedisError as exc:
        log.warning("cache write skipped (%s)", exc)


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
        if not queue.send(queue.INVALIDATE_CACHE, [list(keys)]):
            log.error("cache invalidation not queued; %s may be stale for at most the TTL", keys)


def delete_now(keys) -> None:
    keys = list(keys)
    tombstones = [tombstone_key(key) for key in keys]
    _script(_DELETE_LEAVING_TOMBSTONES)(keys=keys + tombstones, args=[TOMBSTONE_SECONDS, _new_tombstone()])


def delete_cached(keys: list[str]) -> int:
    """delete_now() for those of `keys` cached at this moment, in one script call; returns
    how many. For the many posts of one author, of which few are cached: every write under
    a cached prefix, a tombstone too, is reported to every process's copies, and a
    tombstone per post flooded them. A reader that puts a key back after the call is
    caught by the caller's second pass."""
    if not keys:
        return 0
    names = [name for key in keys for name in (key, tombstone_key(key))]
    return int(_script(_DELETE_IF_CACHED)(keys=names, args=[TOMBSTONE_SECONDS, _new_tombstone()]))


def _new_tombstone() -> str:
    """A tombstone's value: new at each invalidation, so put_unless_written tells one
    invalidation from the next."""
    return secrets.token_hex(8)


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
    for pattern in (f"{prefix}*" for prefix in PREFIXES):
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
