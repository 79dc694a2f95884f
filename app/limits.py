"""Rate limits on the endpoints an attacker would hammer, all set from the config.

Flask-Limiter keeps the counters in Redis, shared by every web process; while Redis is
down it counts in each process's memory instead (so limits loosen, but never vanish).
The limits are attached here, in one place, rather than as decorators on the routes:
the Limiter is per app, and so is its storage.
"""

from __future__ import annotations

from flask import Flask, current_app, request
from flask_jwt_extended import decode_token
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address


def _login_name() -> str:
    body = request.get_json(silent=True)
    name = body.get("login") if isinstance(body, dict) else None
    return f"name:{name.strip().lower()}" if isinstance(name, str) else f"ip:{get_remote_address()}"


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


RULES = [
    ("auth.login", "RATELIMIT_LOGIN_PER_IP", get_remote_address, "login-ip"),
    ("auth.login", "RATELIMIT_LOGIN_PER_NAME", _login_name, "login-name"),
    ("auth.register", "RATELIMIT_REGISTER_PER_IP", get_remote_address, "register-ip"),
    ("auth.refresh", "RATELIMIT_REFRESH_PER_SESSION", _token_claim("sid"), "refresh-session"),
    ("auth.change_password", "RATELIMIT_PASSWORD_PER_USER", _token_claim("sub"), "password-user"),
    ("posts.import_posts", "RATELIMIT_IMPORT_PER_USER", _token_claim("sub"), "import-user"),
    ("users.export_me", "RATELIMIT_EXPORT_PER_USER", _token_claim("sub"), "export-user"),
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
    for endpoint, setting, key, scope in RULES:
        limited = limiter.limit(_setting(setting), key_func=key, scope=scope)
        app.view_functions[endpoint] = limited(app.view_functions[endpoint])
    return limiter
