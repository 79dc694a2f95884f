"""Rate limits declared on routes (ApiBlueprint.rate_limit) and the one private override
of Flask-Limiter they rely on (app/limits.py `_drop_app_wide_check`)."""

from __future__ import annotations

import pytest
from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from app.api import rate_limits_of
from app.limits import _drop_app_wide_check

# every route that declares a limit, with the scopes it declares, top first
DECLARED = {
    "auth.register": ["register-ip"],
    "auth.login": ["login-ip", "login-account-ip", "login-account"],
    "auth.refresh": ["refresh-session"],
    "auth.change_password": ["password-user"],
    "auth.request_password_reset": ["reset-ip", "reset-address"],
    "auth.confirm_password_reset": ["account-token-ip"],
    "auth.verify_email": ["account-token-ip"],
    "auth.resend_verification": ["verify-resend-user"],
    "posts.list_posts": ["search-ip"],
    "posts.import_posts": ["import-user"],
    "users.update_me": ["email-change-user"],
    "users.export_me": ["export-user"],
}


def test_the_declared_limits_are_the_ones_attached(app):
    declared = {
        endpoint: [rule.scope for rule in rate_limits_of(view)]
        for endpoint, view in app.view_functions.items()
        if rate_limits_of(view)
    }
    assert declared == DECLARED


def test_every_declared_limit_is_documented_as_a_429(app, client):
    paths = client.get("/openapi.json").json["paths"]
    documented = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in DECLARED:
            path = "/" + "/".join(
                "{" + part.split(":")[-1].strip("<>") + "}" if part.startswith("<") else part
                for part in rule.rule.strip("/").split("/")
            )
            method = next(iter(rule.methods - {"HEAD", "OPTIONS"})).lower()
            documented[rule.endpoint] = "429" in paths[path][method]["responses"]
    assert documented == dict.fromkeys(DECLARED, True)


def test_the_app_wide_hook_is_gone_and_each_route_still_counts(app, client):
    limiter = app.extensions["rate_limiter"]
    assert limiter._check_request_limit not in app.before_request_funcs.get(None, [])
    before = app.config["RATELIMIT_REGISTER_PER_IP"]
    app.config["RATELIMIT_REGISTER_PER_IP"] = "2 per minute"
    try:
        statuses = [client.post("/api/v1/auth/register", json={}).status_code for _ in range(3)]
    finally:
        app.config["RATELIMIT_REGISTER_PER_IP"] = before
    assert statuses == [422, 422, 429]


def test_a_release_without_the_hook_stops_the_app_from_starting():
    flask_app = Flask(__name__)
    limiter = Limiter(get_remote_address, app=flask_app, storage_uri="memory://")
    hooks = flask_app.before_request_funcs[None]
    assert limiter._check_request_limit in hooks  # what the override relies on
    flask_app.before_request_funcs[None] = [hook for hook in hooks if hook != limiter._check_request_limit]
    with pytest.raises(RuntimeError, match="_check_request_limit"):
        _drop_app_wide_check(flask_app, limiter)


def test_the_hook_is_dropped_from_a_plain_app_too():
    flask_app = Flask(__name__)
    limiter = Limiter(get_remote_address, app=flask_app, storage_uri="memory://")
    _drop_app_wide_check(flask_app, limiter)
    assert limiter._check_request_limit not in flask_app.before_request_funcs[None]
