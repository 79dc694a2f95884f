"""Accounts and sessions: registration, login, refresh rotation, logout, passwords."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from app import cache
from app.auth import revocation
from app.auth.tokens import expiry_of, issue_tokens
from app.db import db
from app.errors import Conflict, NotFound, ServiceUnavailable, Unauthorized, ValidationFailed
from app.models import AuthSession, User
from app.pagination import Page, keyset_page

# unique index -> the field a client must change
_UNIQUE_FIELDS = {"uq_users_username_lower": "username", "uq_users_email_lower": "email"}


def hasher() -> PasswordHasher:
    """argon2id with the configured cost, one per app."""
    cached = current_app.extensions.get("password_hasher")
    if cached is None:
        cfg = current_app.config
        cached = PasswordHasher(
            time_cost=cfg["ARGON2_TIME_COST"],
            memory_cost=cfg["ARGON2_MEMORY_COST"],
            parallelism=cfg["ARGON2_PARALLELISM"],
        )
        current_app.extensions["password_hasher"] = cached
    return cached


class _Hashing:
    """This process's argon2 work: at most PASSWORD_HASHES_PER_PROCESS at once, each run
    on a thread of its own at a lower CPU priority (PASSWORD_HASH_NICE, Linux), so a
    flood of logins neither takes every thread of the process nor starves the requests
    the other threads serve of CPU. A waiting request holds its thread too, so at most
    PASSWORD_HASH_WAITERS_PER_PROCESS wait for their turn, each at most
    PASSWORD_HASH_WAIT_SECONDS; one more, or one that waits longer, gets 503 with
    Retry-After at once."""

    def __init__(self, slots: int, waiters: int, nice: int):
        self.slots = threading.BoundedSemaphore(slots)
        self.admitted = threading.BoundedSemaphore(slots + waiters)
        self.nice = nice
        self.pool = ThreadPoolExecutor(slots, thread_name_prefix="argon2", initializer=self._lower_priority)
        self.pid = os.getpid()

    def _lower_priority(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # per thread on Linux only
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)

    def run(self, work, *args):
        cfg = current_app.config
        if not self.admitted.acquire(blocking=False):
            raise _too_many_logins()
        try:
            if not self.slots.acquire(timeout=cfg["PASSWORD_HASH_WAIT_SECONDS"]):
                raise _too_many_logins()
            try:
                return self.pool.submit(work, *args).result()
            finally:
                self.slots.release()
        finally:
            self.admitted.release()


def _too_many_logins() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Too many logins at once; retry after the time in Retry-After.",
        headers={"Retry-After": str(current_app.config["RETRY_AFTER_SECONDS"])},
    )


def _hashing() -> _Hashing:
    hashing = current_app.extensions.get("password_hashing")
    if hashing is None or hashing.pid != os.getpid():  # a forked child makes its own threads
        cfg = current_app.config
        hashing = _Hashing(
            max(1, cfg["PASSWORD_HASHES_PER_PROCESS"]),
            max(0, cfg["PASSWORD_HASH_WAITERS_PER_PROCESS"]),
            cfg["PASSWORD_HASH_NICE"],
        )
        current_app.extensions["password_hashing"] = hashing
    return hashing


def hash_password(password: str) -> str:
    return _hashing().run(hasher().hash, password)


def register(username: str, email: str, password: str) -> User:
    """Create a user; 409 naming the field when the username or email is taken."""
    user = User(
        username=username,
        email=email,
        password_hash=hash_password(password),
        display_name=username,
    )
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError as exc:
        db.session.rollback()
        field = _UNIQUE_FIELDS.get(getattr(exc.orig.diag, "constraint_name", None))
        if field is None:
            raise
        raise Conflict(f"That {field} is already taken.", errors={field: ["Already taken."]}) from None
    cache.invalidate(cache.users_key())
    return user


def verify_password(user: User, password: str) -> bool:
    """Check a password; upgrade a hash made with older parameters (caller commits)."""
    ph = hasher()
    stored = user.password_hash

    def verify() -> str | None:  # the new hash when the stored one is outdated
        ph.verify(stored, password)
        return ph.hash(password) if ph.check_needs_rehash(stored) else None

    try:
        rehashed = _hashing().run(verify)
    except (VerificationError, InvalidHashError):
        return False
    if rehashed is not None:
        user.password_hash = rehashed
    return True


def _named_by(login: str):
    """The user whose username or email this is, in any case (two unique indexes)."""
    needle = login.lower()
    return or_(func.lower(User.username) == needle, func.lower(User.email) == needle)


def account_id(login: str) -> int | None:
    """The id of the user a login (username or email) names, else None: one indexed query."""
    return db.session.scalars(select(User.id).where(_named_by(login))).first()


def authenticate(login: str, password: str) -> User:
    """The active user with this username or email and password, else 401.

    An unknown login costs the same hashing work as a wrong password, so response
    times do not tell which usernames exist.
    """
    user = db.session.scalars(select(User).where(_named_by(login))).first()
    if user is None:
        hash_password(password)
        raise Unauthorized("Wrong login or password.")
    if not verify_password(user, password):
        raise Unauthorized("Wrong login or password.")
    if not user.is_active:
        # the same answer as a wrong password: no confirmation that this one was right
        raise Unauthorized("Wrong login or password.")
    return user


# -- sessions -------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def login(login_name: str, password: str, *, user_agent: str, ip: str) -> dict:
    """Check the credentials and open a session; returns its first token pair."""
    user = authenticate(login_name, password)
    session = AuthSession(
        id=uuid.uuid4(),
        user_id=user.id,
        user_agent=user_agent[:256],
        ip=ip[:64],
        expires_at=_now() + current_app.config["JWT_REFRESH_TOKEN_EXPIRES"],
    )
    db.session.add(session)
    tokens = issue_tokens(user, session, fresh=True)
    db.session.commit()
    return tokens


def refresh(user: User, payload: dict) -> dict:
    """Rotate the session's refresh token. A token that was already rotated away is
    being replayed: the whole session ends (reuse detection)."""
    session = _session_of(payload, lock=True)
    if session is None or session.revoked_at is not None or session.expires_at <= _now():
        raise Unauthorized("This session has ended; log in again.")
    if session.refresh_jti != payload["jti"]:
        end_sessions([session], reason="refresh-token-reuse")
        raise Unauthorized("This refresh token was already used; the session has been ended. Log in again.")
    tokens = issue_tokens(user, session)
    session.last_used_at = func.now()
    session.expires_at = _now() + current_app.config["JWT_REFRESH_TOKEN_EXPIRES"]
    db.session.commit()
    return tokens


def _session_of(payload: dict, *, lock: bool = False) -> AuthSession | None:
    try:
        sid = uuid.UUID(str(payload.get("sid")))
    except ValueError:
        return None
    return db.session.get(AuthSession, sid, with_for_update=lock)


def end_sessions(sessions: list[AuthSession], *, reason: str, tokens: list[tuple[str, datetime]] = ()) -> None:
    """Revoke sessions (every token they issued) and single tokens; commit and mirror."""
    for session in sessions:
        if session.revoked_at is None:
            session.revoked_at = _now()
            session.revoked_reason = reason
    revocation.revoke_tokens(tokens)
    db.session.commit()
    revocation.mirror(tokens=tokens, sessions=[(s.id, s.expires_at) for s in sessions])


def _active_sessions(user_id: int, *, except_sid: str | None = None) -> list[AuthSession]:
    stmt = select(AuthSession).where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
    if except_sid:
        stmt = stmt.where(AuthSession.id != uuid.UUID(except_sid))
    return list(db.session.scalars(stmt.with_for_update()))


def logout(payload: dict) -> None:
    """End the caller's session: this access token and the session's refresh token die."""
    session = _session_of(payload)
    end_sessions([session] if session else [], reason="logout", tokens=[(payload["jti"], expiry_of(payload))])


def logout_all(user_id: int, payload: dict) -> None:
    end_sessions(_active_sessions(user_id), reason="logout-all", tokens=[(payload["jti"], expiry_of(payload))])


def revoke_all_sessions(user_id: int, *, reason: str) -> int:
    """End every session of a user (admin action, deactivation), committing whatever the
    caller changed with it; returns how many."""
    sessions = _active_sessions(user_id)
    end_sessions(sessions, reason=reason)
    return len(sessions)


@dataclass(frozen=True)
class SessionRow:
    """A session as its owner sees it; `current` marks the one of the token used."""

    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    user_agent: str
    ip: str
    current: bool


def list_sessions(user_id: int, payload: dict, *, limit: int, cursor: str | None) -> Page:
    """My sessions still in force, newest first; `current` marks the caller's."""
    stmt = select(AuthSession).where(
        AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None), AuthSession.expires_at > _now()
    )
    page = keyset_page(
        stmt, [AuthSession.created_at, AuthSession.id], [datetime, uuid.UUID], limit=limit, cursor=cursor
    )
    current = payload.get("sid")
    rows = [
        SessionRow(s.id, s.created_at, s.last_used_at, s.expires_at, s.user_agent, s.ip, current=str(s.id) == current)
        for s in page.items
    ]
    return Page(rows, page.next_cursor)


def end_session(user_id: int, session_id: uuid.UUID) -> None:
    """End one of my sessions; someone else's is as unknown as one that never was."""
    session = db.session.get(AuthSession, session_id)
    if session is None or session.user_id != user_id:
        raise NotFound(f"No session {session_id}.")
    end_sessions([session], reason="ended-by-user")


def change_password(user: User, current_password: str, new_password: str, payload: dict) -> None:
    """Set a new password and end every other session of the user."""
    if not verify_password(user, current_password):
        raise ValidationFailed("The current password is wrong.", errors={"current_password": ["Wrong password."]})
    user.password_hash = hash_password(new_password)
    end_sessions(_active_sessions(user.id, except_sid=payload.get("sid")), reason="password-changed")
