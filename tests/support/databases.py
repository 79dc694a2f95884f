"""Where the tests keep their data: a PostgreSQL database and a Redis db of their own,
so a developer's data is never touched."""

from __future__ import annotations

import os

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from app.config import database_url


def database_url_for_tests() -> URL:
    """TEST_DATABASE_URL, or DATABASE_URL's server with `<name>_test` as the database."""
    if os.environ.get("TEST_DATABASE_URL"):
        return make_url(database_url(os.environ["TEST_DATABASE_URL"]))
    base = make_url(database_url(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postboard")))
    return base.set(database=f"{base.database}_test")


def redis_url_for_tests() -> str:
    """TEST_REDIS_URL, or REDIS_URL's server with database 15."""
    if os.environ.get("TEST_REDIS_URL"):
        return os.environ["TEST_REDIS_URL"]
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    return base.rsplit("/", 1)[0] + "/15" if base.count("/") >= 3 else base.rstrip("/") + "/15"


def recreate_database(url) -> None:
    """Drop and create the database named in `url`, via the server's `postgres` database."""
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{url.database}"'))
    admin.dispose()


def drop_database(url) -> None:
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    admin.dispose()
