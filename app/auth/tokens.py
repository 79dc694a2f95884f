"""JWT issuing, the per-request revocation check, and every token failure as 401.

flask-jwt-extended answers 422 for a malformed or wrongly signed token and 401 only for
a missing one; the callbacks below make every token failure a 401 problem with a reason.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from flask import current_app, g
from flask_jwt_extended import JWTManager, create_access_token, create_refresh_token, get_jwt
from werkzeug.local import LocalProxy

from app.auth import revocation
from app.errors import Unauthorized, problem
from app.extensions import db
from app.models import AuthSession, User
from app.users import service as users

BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="api"'}


def new_jti() -> str:
    return uuid.uuid4().hex


def issue_tokens(user: User, session: AuthSession) -> dict:
    """An access + refresh pair for `user` in `session`; the refresh token's id is the
    session's `refresh_jti`, which the caller stores (set here) and commits."""
    cfg = current_app.config
    sid = str(session.id)
    session.refresh_jti = new_jti()
    return {
        "access_token": create_access_token(
            identity=str(user.id), additional_claims={"role": user.role, "sid": sid, "jti": new_jti()}
        ),
        "refresh_token": create_refresh_token(
            identity=str(user.id), additional_claims={"sid": sid, "jti": session.refresh_jti}
        ),
        "token_type": "Bearer",
        "expires_in": int(cfg["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds()),
    }


def account_gone() -> Unauthorized:
    return Unauthorized("The account of this token no longer exists or is inactive.", headers=BEARER_CHALLENGE)


def current_user_id() -> int:
    """The id of the caller of a `login_required` route, once its account is known to
    exist and be active: one primary-key read of a column (no ORM object), for routes
    that need only the id (the feed, my jobs, my sessions). However the account was
    deactivated or removed (the admin API, a login racing it, SQL by hand), its tokens
    stop working at once.
    """
    token = get_jwt()
    checked = g.get("caller_id")
    if checked is not None and checked[0] is token:  # `g` may outlive a request (tests)
        return checked[1]
    user_id = int(token["sub"])
    if not users.is_active(user_id):
        raise account_gone()
    g.caller_id = (token, user_id)
    return user_id


def token_user_id() -> int:
    """The id the caller's token names, not yet checked against the account: for a
    service that checks the account itself (the feed: on its own before a cached first
    page, folded into the query of a later page)."""
    return int(get_jwt()["sub"])


def _load_current_user() -> User:
    token = get_jwt()
    loaded = g.get("current_user")
    if loaded is not None and loaded[0] is token:  # `g` may outlive a request (tests)
        return loaded[1]
    user = db.session.get(User, int(token["sub"]))
    if user is None or not user.is_active:
        raise account_gone()
    g.current_user = (token, user)
    return user


# the caller as a User, loaded on first use (routes that need only the id ask current_user_id)
current_user: User = LocalProxy(_load_current_user)  # type: ignore[assignment]


def expiry_of(payload: dict) -> datetime:
    return datetime.fromtimestamp(payload["exp"], UTC)


def _unauthorized(detail: str):
    return problem(401, detail, headers=BEARER_CHALLENGE)


def register_token_callbacks(jwt: JWTManager) -> None:
    @jwt.token_in_blocklist_loader
    def _is_revoked(_header, payload) -> bool:
        return revocation.is_revoked(payload)

    @jwt.token_verification_loader
    def _subject_is_a_user_id(_header, payload) -> bool:
        sub = payload.get("sub")
        return isinstance(sub, str) and sub.isdigit() and 0 < int(sub) < 2**63

    @jwt.unauthorized_loader
    def _missing(reason: str):
        return _unauthorized(f"Authentication required: {reason}.")

    @jwt.invalid_token_loader
    def _invalid(reason: str):
        return _unauthorized(f"The token is invalid: {reason}.")

    @jwt.expired_token_loader
    def _expired(_header, _payload):
        return _unauthorized("The token has expired.")

    @jwt.revoked_token_loader
    def _revoked(_header, _payload):
        return _unauthorized("The token has been revoked.")

    @jwt.needs_fresh_token_loader
    def _not_fresh(_header, _payload):
        return _unauthorized("A fresh login is required.")

    @jwt.token_verification_failed_loader
    def _claims_rejected(_header, _payload):
        return _unauthorized("The token's claims were rejected.")
