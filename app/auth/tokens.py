"""JWT issuing, the per-request revocation check, and every token failure as 401.

flask-jwt-extended answers 422 for a malformed or wrongly signed token and 401 only for
a missing one; the callbacks below make every token failure a 401 problem with a reason.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from flask import current_app
from flask_jwt_extended import JWTManager, create_access_token, create_refresh_token

from app.auth import revocation
from app.errors import problem
from app.extensions import db
from app.models import AuthSession, User

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


def expiry_of(payload: dict) -> datetime:
    return datetime.fromtimestamp(payload["exp"], UTC)


def _unauthorized(detail: str):
    return problem(401, detail, headers=BEARER_CHALLENGE)


def register_token_callbacks(jwt: JWTManager) -> None:
    @jwt.token_in_blocklist_loader
    def _is_revoked(_header, payload) -> bool:
        return revocation.is_revoked(payload)

    @jwt.user_lookup_loader
    def _load_user(_header, payload):
        """The token's user; a deleted or deactivated one makes the token worthless."""
        sub = payload.get("sub")
        if not isinstance(sub, str) or not sub.isdigit() or not 0 < int(sub) < 2**63:
            return None
        user = db.session.get(User, int(sub))
        return user if user is not None and user.is_active else None

    @jwt.user_lookup_error_loader
    def _user_gone(_header, _payload):
        return _unauthorized("The account of this token no longer exists or is inactive.")

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
