"""Tokens mailed to a user (password reset, email verification): random, single use,
short-lived, and stored only as their SHA-256 digest, so the table gives nothing away.

Using one is a single UPDATE ... WHERE used_at IS NULL AND expires_at > now() RETURNING:
of two requests with the same token, one gets the row and the other nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, update

from app.db import db
from app.errors import ValidationFailed
from app.models import AccountToken, TokenPurpose

INVALID = "This token is unknown, expired or already used."


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def issue(user_id: int, purpose: TokenPurpose, lifetime: timedelta, *, new_email: str | None = None) -> str:
    """A new token, in the caller's transaction; the user's unused ones of this purpose
    stop working (only the newest mail's link does)."""
    db.session.execute(
        update(AccountToken)
        .where(AccountToken.user_id == user_id, AccountToken.purpose == purpose, AccountToken.used_at.is_(None))
        .values(used_at=func.now())
    )
    token = secrets.token_urlsafe(32)
    db.session.add(
        AccountToken(
            digest=digest(token),
            purpose=purpose.value,
            user_id=user_id,
            new_email=new_email,
            expires_at=datetime.now(UTC) + lifetime,
        )
    )
    db.session.flush()
    return token


def use(token: str, purpose: TokenPurpose) -> AccountToken:
    """Mark the token used (in the caller's transaction) and return it; 422 naming
    `token` when it is unknown, expired, used, or of another purpose."""
    row = db.session.execute(
        update(AccountToken)
        .where(
            AccountToken.digest == digest(token),
            AccountToken.purpose == purpose,
            AccountToken.used_at.is_(None),
            AccountToken.expires_at > func.now(),
        )
        .values(used_at=func.now())
        .returning(AccountToken.user_id, AccountToken.new_email)
    ).first()
    if row is None:
        raise ValidationFailed(INVALID, errors={"token": [INVALID]})
    return row
