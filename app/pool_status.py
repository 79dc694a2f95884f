"""What `flask db pool-status` reports: this process's pool, and PostgreSQL's own count
of the connections open to this database."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from sqlalchemy import text

from app.db import db

_CONNECTIONS = text(
    "SELECT coalesce(nullif(application_name, ''), '?') AS app, coalesce(state, '?') AS state, count(*) "
    "FROM pg_stat_activity WHERE datname = current_database() GROUP BY 1, 2 ORDER BY 1, 2"
)


@dataclass(frozen=True)
class PoolStatus:
    settings: dict | None  # pool_size, max_overflow, pool_timeout, pool_recycle; None behind PgBouncer
    this_process: str  # this process's pool in words
    max_connections: str
    connections: list[tuple[str, str, int]]  # (application name, state, how many)


def _in_words(pool) -> str:
    """What the pool holds, in words (SQLAlchemy's status() counts overflow from -size)."""
    if not hasattr(pool, "checkedout"):  # NullPool: a connection per checkout, closed after
        return "no pool: each use opens a connection and closes it after"
    in_use, idle = pool.checkedout(), pool.checkedin()
    return f"{in_use + idle} connection(s) open: {in_use} in use, {idle} idle"


def pool_status() -> PoolStatus:
    options = current_app.config["SQLALCHEMY_ENGINE_OPTIONS"]
    return PoolStatus(
        settings=None if current_app.config["DB_PGBOUNCER"] else options,
        this_process=_in_words(db.engine.pool),
        max_connections=db.session.scalar(text("SHOW max_connections")),
        connections=[tuple(row) for row in db.session.execute(_CONNECTIONS)],
    )
