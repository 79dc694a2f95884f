"""Read replicas: which PostgreSQL server a read request's queries go to.

With DATABASE_REPLICA_URLS set, the queries of GET, HEAD and OPTIONS requests go to a
healthy replica; everything else, and any read inside `primary_reads()`, to the primary.

- Health, per process: each replica is asked, at most every REPLICA_CHECK_SECONDS, how
  far its replay is behind (0 when it has replayed all it received) and up to which WAL
  position. A replica that does not answer, or lags more than REPLICA_MAX_LAG_SECONDS,
  is skipped until a later check finds it well; with none left, the primary serves.
- Read your writes: a write request by a signed-in user stores the primary's WAL
  position after its commit in Redis (`ryw:<user id>`, for
  REPLICA_READ_YOUR_WRITES_SECONDS), where every process sees it. That user's reads go
  to a replica whose last check saw it past that position, else to the primary.
- The cache stays fresh: a cached entry deleted by a write is refused for
  cache.TOMBSTONE_SECONDS, longer than a replica may lag plus one check interval (the
  settings refuse more), so a reader on a replica cannot put the old version back.
- Revocation and account checks read inside `primary_reads()`: a replica never decides
  who is signed in.
- A replica that fails in the middle of a request: the request is answered again from
  the primary (ApiBlueprint wraps read views with `retry_on_primary`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import threading
import time
from dataclasses import dataclass, field

import jwt as pyjwt
from flask import current_app, g, has_request_context, request
from flask_jwt_extended import get_jwt
from redis.exceptions import RedisError
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from app.db import READ_ENGINE_CHOOSER, READ_ONLY_METHODS, db, prepare_engine
from app.redis_store import redis_store

log = logging.getLogger(__name__)

_HEALTH = text(
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,"
    " CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
    " ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END"
)
_WRITTEN_UP_TO = text("SELECT pg_current_wal_lsn()::text")


def lsn_number(lsn: str) -> int:
    """`16/B374D848` as one comparable number."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def ryw_key(user_id) -> str:
    return f"ryw:{user_id}"


@dataclass
class Replica:
    name: str
    engine: Engine
    checked_at: float = float("-inf")
    healthy: bool = False
    replayed: int = 0  # WAL position replayed, at the last check
    lag: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Replicas:
    """This process's view of the replicas, and the choice for one read."""

    def __init__(self, engines: list[Engine], *, max_lag: float, check_every: float):
        self.replicas = [Replica(f"replica{i}", engine) for i, engine in enumerate(engines)]
        self.max_lag = max_lag
        self.check_every = check_every

    def _check(self, replica: Replica) -> None:
        if time.monotonic() - replica.checked_at < self.check_every:
            return
        if not replica.lock.acquire(blocking=False):
            return  # another thread of this process is checking it
        try:
            with replica.engine.connect() as conn:
                in_recovery, replayed, lag = conn.execute(_HEALTH).one()
            # a promoted server (no longer in recovery) is not a replica to read from
            replica.healthy = bool(in_recovery) and replayed is not None and float(lag) <= self.max_lag
            replica.replayed = lsn_number(replayed) if replayed else 0
            replica.lag = float(lag)
        except DBAPIError as exc:
            if replica.healthy:
                log.warning("replica %s skipped: %s", replica.name, exc.orig or exc)
            replica.healthy = False
        finally:
            replica.checked_at = time.monotonic()
            replica.lock.release()

    def pick(self, at_least: int | None = None) -> Replica | None:
        """A healthy replica (that has replayed past `at_least`), or None for the primary."""
        for replica in self.replicas:
            self._check(replica)
        usable = [r for r in self.replicas if r.healthy and (at_least is None or r.replayed >= at_least)]
        return random.choice(usable) if usable else None  # noqa: S311  (spreading load, not a secret)

    def mark_down(self, engine: Engine) -> None:
        for replica in self.replicas:
            if replica.engine is engine:
                replica.healthy = False
                replica.checked_at = time.monotonic()

    def dispose(self) -> None:
        for replica in self.replicas:
            replica.engine.dispose()


def init_replicas(app) -> None:
    """Engines for DATABASE_REPLICA_URLS (the primary's engine options and listeners),
    the session's choice of engine for reads, and the hook that records a write's WAL
    position for read-your-writes. Nothing at all when no replica is set."""
    urls = app.config["DATABASE_REPLICA_URLS"]
    if not urls:
        return
    options = dict(app.config["SQLALCHEMY_ENGINE_OPTIONS"])
    engines = [create_engine(url, **options) for url in urls]
    for engine in engines:
        prepare_engine(engine)
    app.extensions["replicas"] = Replicas(
        engines, max_lag=app.config["REPLICA_MAX_LAG_SECONDS"], check_every=app.config["REPLICA_CHECK_SECONDS"]
    )
    app.extensions[READ_ENGINE_CHOOSER] = read_engine
    app.after_request(_note_write_position)


def _replicas() -> Replicas | None:
    return current_app.extensions.get("replicas")


def _signed_in_user():
    """The caller's user id, when the request carries a token. On a public route the
    token is not verified: its claims are only read here, to route the caller's reads,
    and a forged one can only send its own reads to the primary."""
    try:
        return get_jwt().get("sub")
    except RuntimeError:  # no token verified in this request
        pass
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        sub = pyjwt.decode(token, options={"verify_signature": False}).get("sub")
    except pyjwt.PyJWTError:
        return None
    return sub if isinstance(sub, str) and sub.isdigit() else None


def _written_up_to(user_id) -> int | None:
    try:
        raw = redis_store.client.get(ryw_key(user_id))
    except RedisError:
        return -1  # unknown: only the primary is sure to have the user's writes
    return lsn_number(raw.decode()) if raw else None


def read_engine(primary: Engine) -> Engine:
    """The engine for a read request's queries: chosen once per request, on its first."""
    if g.get("primary_reads"):
        return primary
    chosen = g.get("read_engine")
    if chosen is None:
        replicas = _replicas()
        replica = None
        if replicas is not None:
            user_id = _signed_in_user()
            at_least = _written_up_to(user_id) if user_id is not None else None
            if at_least != -1:
                replica = replicas.pick(at_least)
        chosen = g.read_engine = replica.engine if replica else primary
    return chosen


@contextlib.contextmanager
def primary_reads():
    """Reads in this block go to the primary (decisions that must see every write)."""
    if not has_request_context():
        yield
        return
    before = g.get("primary_reads", False)
    g.primary_reads = True
    try:
        yield
    finally:
        g.primary_reads = before


def _note_write_position(response):
    """After a write by a signed-in user, where the primary's WAL is: that user's reads
    then go to the primary or a replica past it."""
    if request.method in READ_ONLY_METHODS or response.status_code >= 400:
        return response
    user_id = _signed_in_user()
    if user_id is None:
        return response
    try:
        with db.engine.connect() as conn:
            position = conn.execute(_WRITTEN_UP_TO).scalar_one()
        redis_store.client.set(ryw_key(user_id), position, ex=current_app.config["REPLICA_READ_YOUR_WRITES_SECONDS"])
    except (DBAPIError, RedisError) as exc:
        log.warning("could not note the write position of user %s: %s", user_id, exc)
    return response


def retry_on_primary(view):
    """A read view whose replica failed mid-request is answered again from the primary."""

    @functools.wraps(view)
    def read(*args, **kwargs):
        try:
            return view(*args, **kwargs)
        except OperationalError:
            replicas, chosen = _replicas(), g.get("read_engine")
            if replicas is None or chosen is None or not any(r.engine is chosen for r in replicas.replicas):
                raise
            replicas.mark_down(chosen)
            db.session.rollback()
            g.primary_reads = True
            return view(*args, **kwargs)

    return read
