"""Liveness and readiness probes."""

from __future__ import annotations

import logging

import marshmallow as ma
from flask import current_app
from sqlalchemy import text

from app.api import ApiBlueprint
from app.db import db
from app.errors import problem
from app.redis_store import redis_store

log = logging.getLogger(__name__)

blp = ApiBlueprint("health", __name__, description="Liveness and readiness probes", uses_database=False)


class HealthSchema(ma.Schema):
    status = ma.fields.String(required=True)
    checks = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())


@blp.route("/healthz")
@blp.response(200, HealthSchema)
def healthz():
    """Liveness: the process answers. Touches no backing service."""
    return {"status": "ok"}


@blp.route("/readyz")
@blp.response(200, HealthSchema)
@blp.alt_response(503, response="SERVICE_UNAVAILABLE")
def readyz():
    """Readiness: PostgreSQL and Redis both answer."""
    checks = {"database": _check_database(), "redis": _check_redis()}
    if all(state == "ok" for state in checks.values()):
        return {"status": "ok", "checks": checks}
    return problem(
        503,
        "A backing service is unavailable.",
        headers={"Retry-After": str(current_app.config["RETRY_AFTER_SECONDS"])},
        extra={"checks": checks},
    )


def _check_database() -> str:
    try:
        db.session.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # any failure means "not ready"
        log.warning("readyz: database: %s", exc)
        db.session.rollback()
        return "unavailable"


def _check_redis() -> str:
    try:
        redis_store.client.ping()
        return "ok"
    except Exception as exc:
        log.warning("readyz: redis: %s", exc)
        return "unavailable"
