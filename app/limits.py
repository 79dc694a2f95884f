"""Rate limits: the keys they count by, and attaching the limits routes declare.

A route declares its limits with ApiBlueprint.rate_limit, naming the setting that holds
the limit and one of the keys below. Flask-Limiter keeps the counters in Redis, shared by
every web process; while Redis is down it counts in each process's memory instead (so
limits loosen, but never vanish).
"""

from __future__ import annotations

import hashlib

from flask import Flask, current_app, request
from flask_jwt_extended import decode_token
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from sqlalchemy.exc import SQLAlchemyError

from app.api import rate_limits_of
from app.auth import service as auth_service
from app.db import db
from app.schemas import text_problem

__all__ = [
    "get_remote_address",
    "init_limits",
    "login_account",
    "login_account_and_address",
    "mailed_address",
    "no_email_change",
    "not_a_search",
    "token_claim",
]

_LOGIN_ACCOUNT = "postboard.login_account"  # in the WSGI environ
LOGIN_MAX_LENGTH = 254  # LoginSchema's bound: a longer login names no account
LOGIN_CEILING = (
    "Too many login attempts for this account, from all addresses together. Try again after "
    "the time in Retry-After; sessions already open keep working."
)


def login_account() -> str:
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


def login_account_and_address() -> str:
    """The tight login limit counts per account and client address: guesses from one
    address do not lock the owner out everywhere."""
    return f"{login_account()}|ip:{get_remote_address()}"


def mailed_address() -> str:
    """Key a mail-sending limit by the address in the body: a digest of it lower-cased
    (no addresses kept in Redis); by client address when there is none."""
    body = request.get_json(silent=True)
    email = body.get("email") if isinstance(body, dict) else None
    if not isinstance(email, str) or not email or text_problem(email):
        return f"ip:{get_remote_address()}"
    return "email:" + hashlib.sha256(email.lower().encode()).hexdigest()


def no_email_change() -> bool:
    body = request.get_json(silent=True)
    return not (isinstance(body, dict) and "email" in body)


def not_a_search() -> bool:
    try:
        return "q" not in request.args
    except UnicodeDecodeError:  # not UTF-8: no search runs, the parser answers 400
        return True


def token_claim(claim: str):
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


def init_limits(app: Flask) -> Limiter:
    """The app's Limiter, with every limit its routes declare (ApiBlueprint.rate_limit)
    attached to them; call it after the blueprints are registered."""
    limiter = Limiter(get_remote_address, app=app)
    # the wrappers below hold the limiter weakly; the app must hold it (Flask-Limiter
    # registers itself only when enabled)
    app.extensions["rate_limiter"] = limiter
    _drop_app_wide_check(app, limiter)
    for endpoint, view in list(app.view_functions.items()):
        for rule in rate_limits_of(view):
            view = limiter.limit(_setting(rule.setting), key_func=rule.key, scope=rule.scope, **rule.options)(view)
        app.view_functions[endpoint] = view
    return limiter


def _drop_app_wide_check(app: Flask, limiter: Limiter) -> None:
    """Private override (Flask-Limiter, pinned exactly in setup.cfg): removes the
    before_request hook `Limiter.init_app` adds, `_check_request_limit`.

    The hook serves default and application-wide limits, which this app does not set;
    every limit here is a route decorator, checked in its own wrapper. The hook still
    resolves the limits of every request, a cost on every route (docs/performance.md).
    No public setting turns it off. It relies on the hook being that bound method in
    `app.before_request_funcs[None]`; when a new release changes that, the app refuses
    to start here rather than keep paying for it silently
    (tests/unit/test_limits_override.py).
    """
    hooks = app.before_request_funcs.get(None, [])
    kept = [hook for hook in hooks if hook != limiter._check_request_limit]
    if limiter.enabled and len(kept) != len(hooks) - 1:
        raise RuntimeError("Flask-Limiter no longer adds _check_request_limit as a before_request hook")
    app.before_request_funcs[None] = kept
