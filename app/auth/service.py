"""Registration, password checks and login."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from app.errors import Conflict, Unauthorized
from app.extensions import db
from app.models import User

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


def hash_password(password: str) -> str:
    return hasher().hash(password)


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
    return user


def authenticate(login: str, password: str) -> User:
    """The active user with this username or email and password, else 401.

    An unknown login costs the same hashing work as a wrong password, so response
    times do not tell which usernames exist.
    """
    needle = login.lower()
    user = db.session.scalars(
        select(User).where(or_(func.lower(User.username) == needle, func.lower(User.email) == needle))
    ).first()
    ph = hasher()
    if user is None:
        ph.hash(password)
        raise Unauthorized("Wrong login or password.")
    try:
        ph.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        raise Unauthorized("Wrong login or password.") from None
    if not user.is_active:
        raise Unauthorized("This account is deactivated.")
    if ph.check_needs_rehash(user.password_hash):
        user.password_hash = ph.hash(password)
        db.session.commit()
    return user
