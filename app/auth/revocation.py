"""Token revocation: PostgreSQL is the record, Redis a mirror for the per-request check.

A revoked token id (`jti`) or session id (`sid`) is written to PostgreSQL, then set in
Redis with a TTL equal to what is left of the token's (or session's) life. The check
asks Redis in one round trip; it asks PostgreSQL instead when

- Redis does not answer (down, or slower than REDIS_SOCKET_TIMEOUT): nobody is locked
  out and nothing revoked gets through;
- the mirror is not known to be complete. The rebuild stores the Redis server's run_id
  in `revoked:mirror-ready`; after any restart of Redis (empty, or reloaded from disk
  without the revocations made while it was down) the run_id differs, or the key is
  gone. A failed mirror write also deletes the key when it can. The check then queues
  a rebuild (once) and answers from PostgreSQL until the rebuild sets the key again.

A beat task also re-mirrors the recent revocations every minute, which bounds the one
remaining gap: a writer that could not reach a Redis that readers could still reach.

Each process keeps copies of the mirror keys it has read, present or missing
(app/local_copies.py): Redis reports every change under `revoked:` to every process
before it answers the change, so a revocation is refused at once everywhere, and a
token already checked is checked again without a round trip.

The same read fetches the account mark of the token's user (`revoked:account:{id}`),
set for a while after the account is deactivated, reactivated or deleted through the
API or the CLI: it tells every process to stop trusting its memo that the account is
active (app/auth/tokens.py) and ask PostgreSQL, at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from flask import current_app, g
from redis.exceptions import RedisError
from sqlalchemy import delete, exists, or_, select
from sqlalchemy.dialects.postgresql import insert

from app import local_copies, queue
from app.db import db
from app.models import AuthSession, RevokedToken
from app.redis_store import CountingConnection, redis_store

log = logging.getLogger(__name__)

READY = "revoked:mirror-ready"
REBUILD_QUEUED = "revoked:rebuild-queued"


def jti_key(jti: str) -> str:
    return f"revoked:jti:{jti}"


def sid_key(sid: str) -> str:
    return f"revoked:sid:{sid}"


def account_key(user_id: int | str) -> str:
    return f"revoked:account:{user_id}"


def _now() -> datetime:
    return datetime.now(UTC)


def _ttl(expires_at: datetime) -> int:
    return max(1, int((expires_at - _now()).total_seconds()) + 1)


# -- the check ------------------------------------------------------------------------


# run_id of the Redis server this process talks to, read again after any Redis error or
# any new connection (a restarted server shows up as one of the two)
_server = {"run_id": None, "connects": -1}


def _run_id(client) -> str:
    if _server["run_id"] is None or _server["connects"] != CountingConnection.connects:
        _server["run_id"] = client.info("server")["run_id"]
        _server["connects"] = CountingConnection.connects
    return _server["run_id"]


# what the check learned of the token's account, for the account check after it
MARKED, CLEAR, UNKNOWN = "marked", "clear", "unknown"


def is_revoked(payload: dict) -> bool:
    """True when the token's id or its session has been revoked.

    It also notes in `g` what the mirror says of the token's account (account_mark):
    MARKED (changed lately: ask PostgreSQL), CLEAR, or UNKNOWN (Redis down, or the
    mirror incomplete)."""
    jti, sid = payload.get("jti"), payload.get("sid")
    keys = [READY, account_key(payload.get("sub")), jti_key(jti)] + ([sid_key(sid)] if sid else [])
    client = redis_store.client
    # this process's copies (Redis reports every change under revoked:, so "not revoked"
    # is kept too), the rest in one MGET
    local = local_copies.for_app(current_app, "revocation_local", client, ("revoked:",))
    try:
        ready, account, *revoked = local.mget(keys, keep_missing=True) if local else client.mget(keys)
        complete = ready is not None and ready.decode() == _run_id(client)
    except RedisError as exc:
        _server["run_id"] = None
        log.warning("revocation check: Redis unavailable (%s); asking PostgreSQL", exc)
        _note_account(payload, UNKNOWN)
        return _revoked_in_database(jti, sid)
    if not complete:
        _note_account(payload, UNKNOWN)
        _queue_rebuild()
        return _revoked_in_database(jti, sid)
    _note_account(payload, CLEAR if account is None else MARKED)
    return any(value is not None for value in revoked)


def _note_account(payload: dict, state: str) -> None:
    g.account_mark = (payload.get("jti"), state)


def account_mark(payload: dict) -> str:
    """What the revocation check of this token found of its account (UNKNOWN if none ran)."""
    noted = g.get("account_mark")
    return noted[1] if noted is not None and noted[0] == payload.get("jti") else UNKNOWN


def _revoked_in_database(jti: str | None, sid: str | None) -> bool:
    conditions = [exists().where(RevokedToken.jti == jti)]
    if sid:
        conditions.append(exists().where(AuthSession.id == sid, AuthSession.revoked_at.is_not(None)))
    return bool(db.session.scalar(select(or_(*conditions))))


def _queue_rebuild() -> None:
    """Ask a worker to rebuild the mirror, at most once per 30 s across all processes."""
    try:
        if redis_store.client.set(REBUILD_QUEUED, 1, nx=True, ex=30):
            queue.send(queue.REBUILD_REVOCATION_MIRROR)
    except RedisError as exc:  # the check must answer even when queueing fails
        log.warning("could not queue a revocation mirror rebuild: %s", exc)


# -- writing --------------------------------------------------------------------------


def revoke_tokens(tokens: Iterable[tuple[str, datetime]]) -> None:
    """Record token ids as revoked (in the caller's transaction); mirror after commit."""
    rows = [{"jti": jti, "expires_at": expires_at} for jti, expires_at in tokens]
    if rows:
        db.session.execute(insert(RevokedToken).values(rows).on_conflict_do_nothing())


def mirror(*, tokens: Iterable[tuple[str, datetime]] = (), sessions: Iterable[tuple[str, datetime]] = ()) -> None:
    """Copy committed revocations to Redis. On failure, mark the mirror incomplete."""
    entries = [(jti_key(j), e) for j, e in tokens] + [(sid_key(str(s)), e) for s, e in sessions]
    if not entries:
        return
    try:
        pipe = redis_store.client.pipeline(transaction=False)
        for key, expires_at in entries:
            pipe.set(key, 1, ex=_ttl(expires_at))
        pipe.execute()
    except RedisError as exc:
        log.warning("revocation mirror write failed (%s); checks fall back to PostgreSQL", exc)
        # if Redis is unreachable, checks already ask PostgreSQL; the beat task re-mirrors
        with contextlib.suppress(RedisError):
            redis_store.client.delete(READY)


def mark_accounts_changed(user_ids: Iterable[int]) -> None:
    """After a commit that deactivated, reactivated or deleted accounts: every process
    asks PostgreSQL about them, instead of trusting its memo, for twice as long as such
    a memo lives (ACCOUNT_RECHECK_SECONDS). On failure, the mirror is marked incomplete
    (the checks then ask PostgreSQL)."""
    keys = [account_key(user_id) for user_id in user_ids]
    if not keys:
        return
    seconds = 2 * current_app.config["ACCOUNT_RECHECK_SECONDS"] + 5
    try:
        pipe = redis_store.client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, 1, ex=seconds)
        pipe.execute()
    except RedisError as exc:
        log.warning("account mark write failed (%s); checks fall back to PostgreSQL", exc)
        with contextlib.suppress(RedisError):
            redis_store.client.delete(READY)


# -- keeping the mirror whole ---------------------------------------------------------


def rebuild_mirror(*, since: datetime | None = None) -> int:
    """Copy every live revocation (or those made after `since`) to Redis; return how many.

    Without `since` this is the full rebuild, which then marks the mirror complete for
    this Redis server (its run_id).
    """
    now = _now()
    client = redis_store.client
    run_id = client.info("server")["run_id"]
    token_query = select(RevokedToken.jti, RevokedToken.expires_at).where(RevokedToken.expires_at > now)
    session_query = select(AuthSession.id, AuthSession.expires_at).where(
        AuthSession.revoked_at.is_not(None), AuthSession.expires_at > now
    )
    if since is not None:
        token_query = token_query.where(RevokedToken.revoked_at >= since)
        session_query = session_query.where(AuthSession.revoked_at >= since)
    tokens = db.session.execute(token_query).all()
    sessions = db.session.execute(session_query).all()
    pipe = client.pipeline(transaction=False)
    for jti, expires_at in tokens:
        pipe.set(jti_key(jti), 1, ex=_ttl(expires_at))
    for sid, expires_at in sessions:
        pipe.set(sid_key(str(sid)), 1, ex=_ttl(expires_at))
    if since is None:
        pipe.set(READY, run_id)
        pipe.delete(REBUILD_QUEUED)
    pipe.execute()
    return len(tokens) + len(sessions)


def sync_recent(window: timedelta = timedelta(minutes=3)) -> int:
    """Re-mirror what was revoked lately (the beat task); a full rebuild if not ready."""
    client = redis_store.client
    ready = client.get(READY)
    if ready is None or ready.decode() != client.info("server")["run_id"]:
        return rebuild_mirror()
    return rebuild_mirror(since=_now() - window)


def purge_expired() -> dict[str, int]:
    """Delete revocations and sessions whose tokens can no longer be used anyway."""
    now = _now()
    tokens = db.session.execute(delete(RevokedToken).where(RevokedToken.expires_at <= now)).rowcount
    sessions = db.session.execute(delete(AuthSession).where(AuthSession.expires_at <= now)).rowcount
    db.session.commit()
    return {"revoked_tokens": tokens, "sessions": sessions}
