"""JWT issuing, the per-request revocation check, and every token failure as 401.

flask-jwt-extended answers 422 for a malformed or wrongly signed token and 401 only for
a missing one; the callbacks below make every token failure a 401 problem with a reason.
A token without a claim that issue_tokens gives it is refused as it is decoded.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

from flask import current_app, g
from flask_jwt_extended import JWTManager, create_access_token, create_refresh_token, get_jwt
from flask_jwt_extended.config import config as jwt_config
from jwt import InvalidTokenError, MissingRequiredClaimError
from werkzeug.local import LocalProxy

from app.auth import revocation
from app.db import db
from app.errors import BEARER_CHALLENGE, account_gone, problem
from app.models import AuthSession, User
from app.replicas import primary_reads
from app.users import service as users

# the claims issue_tokens gives every token, and those of each type besides
REQUIRED_CLAIMS = ("sub", "jti", "type", "exp", "sid")
REQUIRED_BY_TYPE = {"access": ("role",), "refresh": ()}


def new_jti() -> str:
    return uuid.uuid4().hex


def issue_tokens(user: User, session: AuthSession, *, fresh: bool = False) -> dict:
    """An access + refresh pair for `user` in `session`; the refresh token's id is the
    session's `refresh_jti`, which the caller stores (set here) and commits. The access
    token is `fresh` only straight from a password (login): routes that change what
    guards the account (its email, deleting it) ask for one."""
    cfg = current_app.config
    sid = str(session.id)
    session.refresh_jti = new_jti()
    return {
        "access_token": create_access_token(
            identity=str(user.id), fresh=fresh, additional_claims={"role": user.role, "sid": sid, "jti": new_jti()}
        ),
        "refresh_token": create_refresh_token(
            identity=str(user.id), additional_claims={"sid": sid, "jti": session.refresh_jti}
        ),
        "token_type": "Bearer",
        "expires_in": int(cfg["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds()),
    }


def check_claims(claims: dict) -> None:
    """Refuse a token without a claim issue_tokens gives it (flask-jwt-extended would
    fill in `type` and `jti`), or with one the services cannot read: PyJWT's errors,
    which flask-jwt-extended answers with the invalid-token 401."""
    for claim in REQUIRED_CLAIMS + REQUIRED_BY_TYPE.get(claims.get("type"), ()):
        if claims.get(claim) is None:
            raise MissingRequiredClaimError(claim)
    if claims["type"] not in REQUIRED_BY_TYPE:
        raise InvalidTokenError("Unknown token type")
    if not all(isinstance(claims[claim], str) for claim in ("jti", "sid", *REQUIRED_BY_TYPE[claims["type"]])):
        raise InvalidTokenError("A claim is not a string")
    try:
        uuid.UUID(claims["sid"])
    except ValueError as exc:
        raise InvalidTokenError("The sid claim is not a session id") from exc


class _ActiveAccounts:
    """This process's memo of accounts PostgreSQL said were active, and when it said so.

    An account deactivated or deleted through the API or the CLI gets a mark in the
    revocation mirror (revocation.mark_accounts_changed), which every process reads with
    the token's revocation check: marked, the memo is not trusted. Changed by hand in
    SQL, the account is seen at the next check after its memo is ACCOUNT_RECHECK_SECONDS
    old. While the mirror cannot be trusted (Redis down, incomplete) every check asks
    PostgreSQL and the memo is emptied: a mark may have been missed meanwhile.
    """

    MAX_ACCOUNTS = 100_000

    def __init__(self):
        self.checked: dict[int, float] = {}
        self.lock = threading.Lock()

    def fresh(self, user_id: int, seconds: float) -> bool:
        checked = self.checked.get(user_id)
        return checked is not None and time.monotonic() - checked < seconds

    def remember(self, user_id: int, since: float) -> None:
        with self.lock:
            if len(self.checked) >= self.MAX_ACCOUNTS:
                self.checked.clear()
            self.checked[user_id] = since

    def forget(self, user_id: int | None = None) -> None:
        with self.lock:
            if user_id is None:
                self.checked.clear()
            else:
                self.checked.pop(user_id, None)


def _active_accounts() -> _ActiveAccounts:
    memo = current_app.extensions.get("active_accounts")
    if memo is None:
        memo = current_app.extensions["active_accounts"] = _ActiveAccounts()
    return memo


def account_active(token: dict) -> bool:
    """Whether the token's account exists and is active, without a PostgreSQL round trip
    when this process has asked lately and nothing has changed since (_ActiveAccounts)."""
    user_id = int(token["sub"])
    memo = _active_accounts()
    mark = revocation.account_mark(token)
    seconds = current_app.config["ACCOUNT_RECHECK_SECONDS"]
    if mark == revocation.CLEAR and memo.fresh(user_id, seconds):
        return True
    if mark == revocation.UNKNOWN:
        memo.forget()
    asked = time.monotonic()
    with primary_reads():
        active = users.is_active(user_id)
    if active and mark == revocation.CLEAR:
        memo.remember(user_id, asked)
    elif not active:
        memo.forget(user_id)
    return active


def current_user_id() -> int:
    """The id of the caller of a `login_required` route, once its account is known to
    exist and be active (account_active: usually no query), for routes that need only
    the id (the feed, follows, my profile, my jobs, my sessions). Deactivated or removed
    through the API or the CLI (a login racing it included), its tokens stop working at
    once; changed by hand in SQL, within ACCOUNT_RECHECK_SECONDS.
    """
    token = get_jwt()
    checked = g.get("caller_id")
    if checked is not None and checked[0] is token:  # `g` may outlive a request (tests)
        return checked[1]
    if not account_active(token):
        raise account_gone()
    user_id = int(token["sub"])
    g.caller_id = (token, user_id)
    return user_id


def _load_current_user() -> User:
    token = get_jwt()
    loaded = g.get("current_user")
    if loaded is not None and loaded[0] is token:  # `g` may outlive a request (tests)
        return loaded[1]
    with primary_reads():
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
    @jwt.decode_key_loader
    def _key_after_claims_check(_header, unverified_claims) -> str:
        # flask-jwt-extended's one hook that sees the claims as sent, before it adds
        # defaults; the signature is still verified after (with the key returned here)
        check_claims(unverified_claims)
        return jwt_config.decode_key

    @jwt.token_in_blocklist_loader
    def _is_revoked(_header, payload) -> bool:
        with primary_reads():
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
