"""The application factory."""

from __future__ import annotations

import logging
import re
import uuid

from flask import Flask, g, request

from app import config as config_module
from app.api import register_id_converter
from app.extensions import ProblemApi, db, jwt, migrate, redis_store

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(config_module.load(config))
    app.json.sort_keys = False
    logging.basicConfig(level=app.config.get("LOG_LEVEL", "INFO"))

    db.init_app(app)
    migrate.init_app(app, db, directory=str(_migrations_dir()))
    jwt.init_app(app)
    redis_store.init_app(app)
    # one Api per app (flask-smorest keeps the spec on it), so tests may build several
    api = ProblemApi(app)
    register_id_converter(app, api)
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})

    from app import models  # noqa: F401  (registers the tables)
    from app.auth.routes import blp as auth_blp
    from app.auth.tokens import register_token_callbacks
    from app.errors import register_error_handlers
    from app.health import blp as health_blp
    from app.posts.routes import blp as posts_blp
    from app.users.routes import blp as users_blp

    register_token_callbacks(jwt)
    register_error_handlers(app)
    for blueprint in (auth_blp, users_blp, posts_blp):
        api.register_blueprint(blueprint, url_prefix=f"/api/v1{blueprint.url_prefix or ''}")
    api.register_blueprint(health_blp)
    _register_request_id(app)

    from app.cli import register_cli

    register_cli(app)

    from worker import make_celery

    make_celery(app)
    return app


def _migrations_dir():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "migrations"


def _register_request_id(app: Flask) -> None:
    """Every response carries X-Request-ID: the client's when it is sane, else a new one."""

    @app.before_request
    def _take_request_id():
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex

    @app.after_request
    def _echo_request_id(response):
        response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
        return response
