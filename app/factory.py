"""The application factory: builds the app from its parts, in the order they hook in."""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask
from flask_cors import CORS
from flask_migrate import Migrate
from werkzeug.middleware.proxy_fix import ProxyFix

from app import config as config_module
from app import models  # noqa: F401  (every table on db.metadata, for `flask db`)
from app.admin.routes import blp as admin_blp
from app.api import ProblemApi, StrictJSONProvider, init_api
from app.auth.routes import blp as auth_blp
from app.auth.tokens import register_token_callbacks
from app.background import celery_init_app
from app.cli import register_cli
from app.db import db, init_db
from app.errors import register_error_handlers
from app.health import blp as health_blp
from app.jobs.routes import blp as jobs_blp
from app.jobs.runners import init_runners
from app.jwt_manager import jwt
from app.limits import init_limits
from app.logs import configure_logging, register_request_logging
from app.metrics import POOL_TIMEOUTS, init_metrics
from app.posts.routes import blp as posts_blp
from app.redis_store import redis_store
from app.replicas import init_replicas
from app.request_hooks import NoCookieSessions, register_request_hooks
from app.users.routes import blp as users_blp

_ROOT = Path(__file__).resolve().parent.parent
# under /api/v1; the probes (/healthz, /readyz) sit at the root
_API_BLUEPRINTS = (auth_blp, users_blp, posts_blp, jobs_blp, admin_blp)


def create_app(config: dict | None = None) -> Flask:
    # named after the package: Flask's logger and root path, and Celery's main name
    app = Flask(__package__, instance_path=str(config_module.instance_dir()))
    app.config.update(config_module.load(config))
    app.json = StrictJSONProvider(app)
    app.json.sort_keys = False
    app.session_interface = NoCookieSessions()
    configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    _trust_proxies(app)

    init_db(app)
    init_replicas(app)
    Migrate(app, db, directory=str(_migrations_dir()))
    jwt.init_app(app)
    register_token_callbacks(jwt)
    redis_store.init_app(app)
    api = init_api(app)
    register_error_handlers(app, on_pool_timeout=POOL_TIMEOUTS.inc)
    _register_blueprints(api)
    # after_request hooks run last registered first: the standard headers see every
    # header the later ones (metrics, rate limits, CORS) add
    register_request_hooks(app)
    register_request_logging(app)
    init_metrics(app)
    init_limits(app)
    _allow_cors(app)
    register_cli(app)
    init_runners(app)
    celery_init_app(app)
    return app


def _trust_proxies(app: Flask) -> None:
    if hops := app.config["TRUSTED_PROXY_COUNT"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)


def _register_blueprints(api: ProblemApi) -> None:
    for blueprint in _API_BLUEPRINTS:
        api.register_blueprint(blueprint, url_prefix=f"/api/v1{blueprint.url_prefix or ''}")
    api.register_blueprint(health_blp)


def _allow_cors(app: Flask) -> None:
    if app.config["CORS_ORIGINS"]:
        CORS(
            app,
            resources={r"/api/*": {"origins": app.config["CORS_ORIGINS"]}},
            allow_headers=["Authorization", "Content-Type", "If-Match", "X-Request-ID"],
            expose_headers=["ETag", "Location", "Retry-After", "X-Request-ID"],
            max_age=600,
        )


def _migrations_dir() -> Path:
    """Beside the package in a checkout; MIGRATIONS_DIR or ./migrations when installed."""
    if os.environ.get("MIGRATIONS_DIR"):
        return Path(os.environ["MIGRATIONS_DIR"])
    beside = _ROOT / "migrations"
    return beside if beside.is_dir() else Path.cwd() / "migrations"
