"""Rate limits on the endpoints an attacker would hammer, all set from the config.

Flask-Limiter keeps the counters in Redis, shared by every web process; while Redis is
down it counts in each process's memory instead (so limits loosen, but never vanish).
The limits are attached here, in one place, rather than as decorators on the routes:
the Limiter is per app, and so is its storage.
"""

from __future__ import annotations

import hashlib

from flask import Flask, current_app, request
from flask_jwt_extended import decode_token
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from sqlalchemy.exc import SQLAlchemyError

from app.api import text_problem
from app.auth import service as auth_service
from app.db import db

_LOGIN_ACCOUNT = "postboard.login_account"  # in the WSGI environ
LOGIN_MAX_LENGTH = 254  # LoginSchema's bound: a longer login names no account
LOGIN_CEILING = (
    "Too many login attempts for this account, from all addresses together. Try again after "
    "the time in Retry-After; sessions already open keep working."
)


def _login_account() -> str:
    """The account a login attempt is against: `user:<id>` when the login is a user's
    username or email (the two are one account), else a digest of the login. Either
    way the limits, statuses and headers are the same: they do not tell whether the
    account exists. Resolved once per request (kept on the request: `g` lives as long
    as the app context, which may span several requests)."""
    account = request.environ.get(_LOGIN_ACCOUNT)
    if account is None:
        account = request.environ[_LOGIN_ACCOUNT] = _resolve_login_account()
    return account


def _resolve_login_account() -> str:
    body = request.get_json(silent=True)
    login = body.get("login") if isinstance(body, dict) else None
    if not isinstance(login, str) or text_problem(login):
        return f"ip:{get_remote_address()}"  # refused by the schema; counted by address
    if 0 < len(login) <= LOGIN_MAX_LENGTH:
        try:
            user_id = auth_service.account_id(login)
        except SQLAlchemyError:  # the login itself then answers 503
            db.session.rollback()
            user_id = None
        if user_id is not None:
            return f"user:{user_id}"
    # a digest: bounded keys, and no login names kept in Redis
    return "login:" + hashlib.sha256(login.lower().encode()).hexdigest()


def _login_account_and_address() -> str:
    """The tight login limit counts per account and client address: guesses from one
    address do not lock the owner out everywhere."""
    return f"{_login_account()}|ip:{get_remote_address()}"


def _mailed_address() -> str:
    """Key a mail-sending limit by the address in the body: a digest of it lower-cased
    (no addresses kept in Redis); by client address when there is none."""
    body = request.get_json(silent=True)
    email = body.get("email") if isinstance(body, dict) else None
    if not isinstance(email, str) or not email or text_problem(email):
        return f"ip:{get_remote_address()}"
    return "email:" + hashlib.sha256(email.lower().encode()).hexdigest()


def _no_email_change() -> bool:
    body = request.get_json(silent=True)
    return not (isinstance(body, dict) and "email" in body)


def _not_a_search() -> bool:
    try:
        return "q" not in request.args
    except UnicodeDecodeError:  # not UTF-8: no search runs, the parser answers 400
        return True


def _token_claim(claim: str):
    """Key by a claim of the bearer token (session, user); by IP when there is none."""

    def key() -> str:
        header = request.headers.get("Authorization", "")
        try:
            return f"{claim}:{decode_token(header.removeprefix('Bearer ').strip(), allow_expired=True)[claim]}"
        except Exception:  # a bad token is refused later with 401; count it by address
            return f"ip:{get_remote_address()}"

    return key


def _setting(name: str):
    """The limit as the config says now (read per request, so it can be changed live)."""
    return lambda: current_app.config[name]


# (endpoint, setting, key, scope[, options for Limiter.limit])
RULES = [
    ("auth.login", "RATELIMIT_LOGIN_PER_IP", get_remote_address, "login-ip"),
    ("auth.login", "RATELIMIT_LOGIN_PER_ACCOUNT_IP", _login_account_and_address, "login-account-ip"),
    ("auth.login", "RATELIMIT_LOGIN_PER_ACCOUNT", _login_account, "login-account", {"error_message": LOGIN_CEILING}),
    ("posts.list_posts", "RATELIMIT_SEARCH_PER_IP", get_remote_address, "search-ip", {"exempt_when": _not_a_search}),
    ("auth.register", "RATELIMIT_REGISTER_PER_IP", get_remote_address, "register-ip"),
    ("auth.refresh", "RATELIMIT_REFRESH_PER_SESSION", _token_claim("sid"), "refresh-session"),
    ("auth.change_password", "RATELIMIT_PASSWORD_PER_USER", _token_claim("sub"), "password-user"),
    ("posts.import_posts", "RATELIMIT_IMPORT_PER_USER", _token_claim("sub"), "import-user"),
    ("users.export_me", "RATELIMIT_EXPORT_PER_USER", _token_claim("sub"), "export-user"),
    ("auth.request_password_reset", "RATELIMIT_PASSWORD_RESET_PER_IP", get_remote_address, "reset-ip"),
    ("auth.request_password_reset", "RATELIMIT_PASSWORD_RESET_PER_ADDRESS", _mailed_address, "reset-address"),
    ("auth.confirm_password_reset", "RATELIMIT_ACCOUNT_TOKEN_PER_IP", get_remote_address, "account-token-ip"),
    ("auth.verify_email", "RATELIMIT_ACCOUNT_TOKEN_PER_IP", get_remote_address, "account-token-ip"),
    ("auth.resend_verification", "RATELIMIT_VERIFY_RESEND_PER_USER", _token_claim("sub"), "verify-resend-user"),
    # an email change mails the new address: as many as resends allow, counted apart
    (
        "users.update_me",
        "RATELIMIT_VERIFY_RESEND_PER_USER",
        _token_claim("sub"),
        "email-change-user",
        {"exempt_when": _no_email_change},
    ),
]


def init_limits(app: Flask) -> Limiter:
    limiter = Limiter(get_remote_address, app=app)
    # the decorators below hold the limiter weakly; the app must hold it (Flask-Limiter
    # registers itself only when enabled)
    app.extensions["rate_limiter"] = limiter
    # Every limit here is a per-route decorator, checked in its own wrapper. Flask-Limiter's
    # app-wide before_request hook serves only default/application limits, which we do not
    # set, and cost ~0.2 ms on every request (measured in-process): drop it.
    app.before_request_funcs[None] = [
        hook for hook in app.before_request_funcs.get(None, []) if hook != limiter._check_request_limit
    ]
    for endpoint, setting, key, scope, *options in RULES:
        limited = limiter.limit(_setting(setting), key_func=key, scope=scope, **(options[0] if options else {}))
        app.view_functions[endpoint] = limited(app.view_functions[endpoint])
    return limiter
