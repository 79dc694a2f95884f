"""The application factory."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

from flask import Flask, g, request
from flask.sessions import SessionInterface
from flask_migrate import Migrate
from werkzeug.middleware.proxy_fix import ProxyFix

from app import config as config_module
from app.api import StrictJSONProvider, init_api
from app.db import db, init_db
from app.jwt_manager import jwt
from app.logs import configure_logging, register_request_logging
from app.redis_store import redis_store

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_ROOT = Path(__file__).resolve().parent.parent


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_path=str(config_module.instance_dir()))
    app.config.update(config_module.load(config))
    app.json = StrictJSONProvider(app)
    app.json.sort_keys = False
    app.session_interface = NoCookieSessions()
    configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    if app.config["TRUSTED_PROXY_COUNT"]:
        hops = app.config["TRUSTED_PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)

    init_db(app)
    Migrate(app, db, directory=str(_migrations_dir()))
    jwt.init_app(app)
    redis_store.init_app(app)
    api = init_api(app)

    from app import models  # noqa: F401  (registers the tables)
    from app.admin.routes import blp as admin_blp
    from app.auth.routes import blp as auth_blp
    from app.auth.tokens import register_token_callbacks
    from app.errors import register_error_handlers
    from app.health import blp as health_blp
    from app.jobs.routes import blp as jobs_blp
    from app.metrics import POOL_TIMEOUTS, init_metrics
    from app.posts.routes import blp as posts_blp
    from app.users.routes import blp as users_blp

    register_token_callbacks(jwt)
    register_error_handlers(app, on_pool_timeout=POOL_TIMEOUTS.inc)
    for blueprint in (auth_blp, users_blp, posts_blp, jobs_blp, admin_blp):
        api.register_blueprint(blueprint, url_prefix=f"/api/v1{blueprint.url_prefix or ''}")
    api.register_blueprint(health_blp)
    _register_request_hooks(app)
    register_request_logging(app)

    init_metrics(app)

    from app.limits import init_limits

    init_limits(app)
    if app.config["CORS_ORIGINS"]:
        from flask_cors import CORS

        CORS(
            app,
            resources={r"/api/*": {"origins": app.config["CORS_ORIGINS"]}},
            allow_headers=["Authorization", "Content-Type", "If-Match", "X-Request-ID"],
            expose_headers=["ETag", "Location", "Retry-After", "X-Request-ID"],
            max_age=600,
        )

    from app.cli import register_cli

    register_cli(app)

    from app.jobs.runners import init_runners

    init_runners(app)

    from worker import make_celery

    make_celery(app)
    return app


class NoCookieSessions(SessionInterface):
    """A token API keeps no cookie session: Flask's default signs and parses one on
    every request (~15 µs) for nothing."""

    def open_session(self, app, request):
        return None  # Flask then hands out its read-only NullSession


def _migrations_dir() -> Path:
    """Beside the package in a checkout; MIGRATIONS_DIR or ./migrations when installed."""
    if os.environ.get("MIGRATIONS_DIR"):
        return Path(os.environ["MIGRATIONS_DIR"])
    beside = _ROOT / "migrations"
    return beside if beside.is_dir() else Path.cwd() / "migrations"


# endpoints that take a file upload (multipart), and may be larger than MAX_CONTENT_LENGTH
_UPLOADS = {"posts.import_posts": "IMPORT_MAX_BYTES"}
# on every response; a route never sets these itself
_SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
]


def _register_request_hooks(app: Flask) -> None:
    @app.before_request
    def _take_request_id():
        """Every response carries X-Request-ID: the client's when it is sane, else a new one.
        Also starts the request's clock (read by the request log and the metrics)."""
        g.started = time.perf_counter()
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex

    @app.before_request
    def _upload_size_limit():
        """Uploads may be larger than other bodies. Only the limit is set here: the media
        type is checked where the body is read (app/api.py StrictParser), after the
        view's authentication."""
        if request.endpoint in _UPLOADS:
            request.max_content_length = app.config[_UPLOADS[request.endpoint]]

    @app.after_request
    def _standard_headers(response):
        headers = response.headers
        headers.extend(_SECURITY_HEADERS)
        headers.add("X-Request-ID", g.get("request_id") or uuid.uuid4().hex)
        if "HTTP_AUTHORIZATION" in request.environ or request.path.startswith("/api/v1/auth/"):
            # tokens and private data must not sit in any cache
            headers["Cache-Control"] = "no-store"
        status = response.status_code
        if status == 204:
            headers.pop("Content-Type", None)
        if status not in (429, 503) and "Retry-After" in headers:
            # Flask-Limiter adds Retry-After to every limited response; it means "wait" only here
            del headers["Retry-After"]
        return response
