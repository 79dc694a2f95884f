"""Test harness: real PostgreSQL and Redis, schema built by the migrations once per
session, every test inside a transaction that is rolled back after it.

The servers are the ones in DATABASE_URL / REDIS_URL (the embedded ones under
instance/ when `make test` started them). Tests use their own database, `<name>_test`
(or TEST_DATABASE_URL), created afresh each session, and Redis database 15 (or
TEST_REDIS_URL), so a developer's data is never touched.

Each test is marked with the folder it sits in: `unit` (functions called directly),
`api` (the app driven through the Flask test client) or `system` (gunicorn, Celery
workers, honcho, PgBouncer or servers of its own started as processes). A test in
another folder that starts such a process is marked `system` by hand, so
`pytest -m "not system"` needs only the PostgreSQL and Redis already running.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from flask_migrate import upgrade
from flask_sqlalchemy.session import _app_ctx_id
from sqlalchemy import event, text
from sqlalchemy.orm import scoped_session, sessionmaker

from app.db import db
from app.factory import create_app
from app.redis_store import redis_store
from tests.support.counting import QueryCounter
from tests.support.databases import database_url_for_tests, recreate_database, redis_url_for_tests
from tests.support.sessions import open_session
from tests.support.smtp_server import SmtpServer


@pytest.fixture(scope="session")
def test_db_url():
    url = database_url_for_tests()
    recreate_database(url)
    return url


@pytest.fixture(scope="session")
def app(test_db_url):
    redis_url = redis_url_for_tests()
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


@pytest.fixture
def local_copies_on(app, monkeypatch):
    """For the tests of each process's copies (app/local_copies.py): on, even when the
    suite runs with them off (CACHE_LOCAL_MAX_BYTES=0, as every other test must pass)."""
    if app.config["CACHE_LOCAL_MAX_BYTES"] > 0:
        yield
        return
    monkeypatch.setitem(app.config, "CACHE_LOCAL_MAX_BYTES", 16 * 1024 * 1024)
    yield
    for name in ("cache_local", "revocation_local"):  # made for this test: closed with it
        local = app.extensions.pop(name, None)
        if local is not None:
            local.close()


@pytest.fixture
def login():
    """Bearer headers for a user (a fresh session each call)."""

    def headers_for(user, kind: str = "access", *, fresh: bool = False) -> dict:
        return {"Authorization": f"Bearer {open_session(user, fresh=fresh)[f'{kind}_token']}"}

    return headers_for


@pytest.fixture
def smtp_server():
    """A real SMTP server on a port of its own, keeping what it receives."""
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def mail_on(app, smtp_server, monkeypatch):
    """Mail on, to the test's own SMTP server."""
    monkeypatch.setitem(app.config, "MAIL_URL", smtp_server.url)
    return smtp_server


TESTS = Path(__file__).parent
KINDS = ("unit", "api", "system")


@pytest.hookimpl(tryfirst=True)  # before `-m` picks tests by their markers
def pytest_collection_modifyitems(items):
    for item in items:
        if not item.path.is_relative_to(TESTS):
            continue
        kind = item.path.relative_to(TESTS).parts[0]
        if kind not in KINDS:
            raise pytest.UsageError(f"{item.nodeid}: test modules go in tests/unit, tests/api or tests/system")
        item.add_marker(kind)
