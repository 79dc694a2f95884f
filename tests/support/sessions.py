"""A signed-in user without the cost of a login request."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from flask import current_app

from app.auth.tokens import issue_tokens
from app.db import db
from app.models import AuthSession


def open_session(user, *, fresh: bool = False) -> dict:
    """A session for `user` and its token pair, without the cost of a login request
    (`fresh`: as a login issues them)."""
    session = AuthSession(
        id=uuid.uuid4(), user_id=user.id, expires_at=datetime.now(UTC) + app_config("JWT_REFRESH_TOKEN_EXPIRES")
    )
    db.session.add(session)
    tokens = issue_tokens(user, session, fresh=fresh)
    db.session.commit()
    return tokens


def app_config(key):
    return current_app.config[key]
