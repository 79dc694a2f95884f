"""Test harness: real PostgreSQL and Redis, schema built by the migrations once per
session, every test inside a transaction that is rolled back after it.

The servers are the ones in DATABASE_URL / REDIS_URL (the embedded ones under
instance/ when `make test` started them). Tests use their own database, `<name>_test`
(or TEST_DATABASE_URL), created afresh each session, and Redis database 15 (or
TEST_REDIS_URL), so a developer's data is never touched.
"""

from __future__ import annotations

import contextlib
import os

import pytest
from flask_migrate import upgrade
from flask_sqlalchemy.session import _app_ctx_id
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import scoped_session, sessionmaker

from app.config import database_url
from app.db import db
from app.factory import create_app
from app.redis_store import redis_store


def _test_database_url():
    if os.environ.get("TEST_DATABASE_URL"):
        return make_url(database_url(os.environ["TEST_DATABASE_URL"]))
    base = make_url(database_url(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postboard")))
    return base.set(database=f"{base.database}_test")


def _test_redis_url() -> str:
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


@pytest.fixture(scope="session")
def test_db_url():
    url = _test_database_url()
    recreate_database(url)
    return url


@pytest.fixture(scope="session")
def app(test_db_url):
    redis_url = _test_redis_url()
    app = create_app(
        {
            "APP_ENV": "test",
            "SQLALCHEMY_DATABASE_URI": test_db_url.render_as_string(hide_password=False),
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
        }
    )
    with app.app_context():
        upgrade()
        redis_store.client.flushdb()
    return app


@pytest.fixture(autouse=True)
def _transaction(request, app):
    """Run the test inside a transaction rolled back afterwards.

    The test body and the requests it makes through the test client share one app
    context, so one db.session, bound to one connection; commits release savepoints.
    """
    if "no_transaction" in request.keywords:
        yield
        return
    with app.app_context():
        connection = db.engine.connect()
        outer = connection.begin()
        original = db.session
        db.session = scoped_session(
            sessionmaker(bind=connection, join_transaction_mode="create_savepoint"), scopefunc=_app_ctx_id
        )
        try:
            yield
        finally:
            db.session.remove()
            db.session = original
            outer.rollback()
            connection.close()


@pytest.fixture
def committed(app):
    """For tests whose data other processes must see: they commit for real; wiped after."""
    yield
    with app.app_context():
        db.session.remove()
        db.session.execute(text("TRUNCATE users, revoked_tokens CASCADE"))
        db.session.commit()


@pytest.fixture(autouse=True)
def _broker_not_marked_down():
    """A test that stopped Redis must not leave the next one unable to queue tasks."""
    from app import queue

    queue._broker["down_until"] = 0.0


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(autouse=True)
def redis_client(app):
    """Redis database 15, emptied before each test (rate-limit counters, the mirror)."""
    with app.app_context():
        client = redis_store.client
    client.flushdb()
    app.extensions.pop("cache_tally", None)  # like a fresh process: no counts of the last test
    return client


class QueryCounter:
    def __init__(self):
        self.statements: list[str] = []

    def __call__(self, _conn, _cursor, statement, *_args):
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK TO")):
            self.statements.append(statement)

    @property
    def count(self) -> int:
        return len(self.statements)


@pytest.fixture
def count_queries(app):
    """`with count_queries() as q: ...; q.count` counts the SQL statements sent."""

    @contextlib.contextmanager
    def counting():
        counter = QueryCounter()
        event.listen(db.engine, "before_cursor_execute", counter)
        try:
            yield counter
        finally:
            event.remove(db.engine, "before_cursor_execute", counter)

    return counting


def open_session(user) -> dict:
    """A session for `user` and its token pair, without the cost of a login request."""
    import uuid
    from datetime import UTC, datetime

    from app.auth.tokens import issue_tokens
    from app.models import AuthSession

    session = AuthSession(
        id=uuid.uuid4(), user_id=user.id, expires_at=datetime.now(UTC) + app_config("JWT_REFRESH_TOKEN_EXPIRES")
    )
    db.session.add(session)
    tokens = issue_tokens(user, session)
    db.session.commit()
    return tokens


def redis_calls(redis_client, command: str) -> int:
    """How many times the Redis server has run `command` so far (INFO commandstats)."""
    return redis_client.info("commandstats").get(f"cmdstat_{command.lower()}", {}).get("calls", 0)


def app_config(key):
    from flask import current_app

    return current_app.config[key]


@pytest.fixture
def login():
    """Bearer headers for a user (a fresh session each call)."""

    def headers_for(user, kind: str = "access") -> dict:
        return {"Authorization": f"Bearer {open_session(user)[f'{kind}_token']}"}

    return headers_for


def pytest_configure(config):
    config.addinivalue_line("markers", "no_transaction: the test manages its own data and commits")
