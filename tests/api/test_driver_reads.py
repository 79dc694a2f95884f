"""The hot reads sent straight to psycopg (app/db.py select_rows): the same rows as
SQLAlchemy's execute gives, seen by the engine's cursor events as reads, and errors
as SQLAlchemy raises them; a read outside the session's transaction on a pooled
connection borrowed for it alone and given back as it was (with a pool of our own)."""

from __future__ import annotations

import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import Integer, PickleType, bindparam, column, event, func, literal_column, select, text, type_coerce
from sqlalchemy.exc import DataError, OperationalError

from app.config import engine_options
from app.db import db, select_rows
from app.factory import create_app
from app.posts import service as posts
from app.users import service as users
from tests.support.counting import pool_traffic
from tests.support.factories import FollowFactory, PostFactory, UserFactory


def as_sqlalchemy_gives_them(statement, params) -> list[dict]:
    return [row._asdict() for row in db.session.connection().execute(statement, params)]


def test_the_hot_reads_get_the_rows_sqlalchemy_would_give(app):
    author = UserFactory(bio="Writes things.")
    for _ in range(3):
        FollowFactory(followed_id=author.id)
    ids = [post.id for post in PostFactory.create_batch(3, author=author)]
    newest = posts._newest_posts(active_authors=True)
    reads = [
        (users._public_profile_stmt(), {"user_id": author.id}),
        (posts._public_posts(), {"ids": ids}),  # an array parameter
        (posts._FOLLOWERS_TO_NOTIFY, {"author": author.id, "threshold": 10_000}),  # an array column
        (newest._first, {"page_limit": 2}),
    ]
    for statement, params in reads:
        expected = as_sqlalchemy_gives_them(statement, params)
        assert expected, statement
        assert [row._asdict() for row in select_rows(statement, params)] == expected
    (profile,) = select_rows(users._public_profile_stmt(), {"user_id": author.id})
    assert (profile.bio, profile.post_count, profile.follower_count) == ("Writes things.", 3, 3)


def test_a_locking_read_is_refused():
    """Its lock would end with its statement on a borrowed connection."""
    with pytest.raises(TypeError, match="does not lock"):
        select_rows(select(literal_column("1", Integer).label("one")).with_for_update(), {})


def test_a_column_that_sqlalchemy_would_convert_is_refused():
    with pytest.raises(TypeError, match="cannot return"):
        select_rows(select(column("settings", PickleType)).select_from(text("users")), {})
    assert select_rows(select(literal_column("1", Integer).label("one")), {})[0].one == 1


def test_the_statement_is_counted_like_any_other(count_queries):
    user_id = UserFactory().id
    with count_queries() as counter:
        select_rows(users._public_profile_stmt(), {"user_id": user_id})
    assert len(counter.statements) == 1 and counter.statements[0].startswith("SELECT users.id")


@pytest.mark.no_transaction
def test_an_error_is_sqlalchemys_and_the_connection_serves_on(app):
    one_over = select(type_coerce(literal_column("1", Integer) / bindparam("zero", type_=Integer), Integer).label("q"))
    with app.test_request_context("/api/v1/posts", method="POST"):
        db.session.execute(select(1))  # the session's transaction begun: the read runs in it
        raw = db.session.connection().connection.dbapi_connection
        with pytest.raises(DataError, match="division by zero") as raised:
            select_rows(one_over, {"zero": 0})
        assert "%(zero)s" in raised.value.statement  # the SQL, not the values
        assert raw.info.transaction_status == TransactionStatus.INERROR
        db.session.rollback()
        assert select_rows(one_over, {"zero": 1})[0].q == 1
        db.session.remove()


@pytest.fixture
def stored_author(app, committed):
    with app.app_context():
        author = UserFactory(bio="Reads fast.")
        db.session.commit()
        author_id = author.id
        db.session.remove()
    return author_id


@pytest.mark.no_transaction
def test_a_get_requests_first_read_borrows_a_pooled_connection_and_gives_it_back_as_it_was(app, stored_author):
    with app.app_context():
        engine = db.engine
    with pool_traffic(engine) as seen, app.test_request_context(f"/api/v1/users/{stored_author}"):
        (profile,) = select_rows(users._public_profile_stmt(), {"user_id": stored_author})
        assert not db.session().in_transaction()  # the session took no connection
        assert engine.pool.checkedout() == 0
    assert (profile.id, profile.bio) == (stored_author, "Reads fast.")
    assert (seen["checkouts"], seen["checkins"]) == (1, 1)
    ((verb, raw, autocommit),) = seen["statements"]
    assert (verb, autocommit) == ("SELECT", True)  # no BEGIN, no ROLLBACK
    assert raw.autocommit is False  # back in the pool as the session's connections expect it


@pytest.mark.no_transaction
def test_a_write_requests_read_outside_its_transaction_borrows_a_connection_too(app, stored_author):
    """Before a write request opens its transaction, or after its commit (the followers a
    new post notifies), a read sees what a new transaction's first statement would."""
    with app.app_context():
        engine = db.engine
    with pool_traffic(engine) as seen, app.test_request_context("/api/v1/posts", method="POST"):
        (profile,) = select_rows(users._public_profile_stmt(), {"user_id": stored_author})
        assert not db.session().in_transaction()
        assert engine.pool.checkedout() == 0
    assert profile.id == stored_author
    assert (seen["checkouts"], seen["checkins"]) == (1, 1)
    ((verb, raw, autocommit),) = seen["statements"]
    assert (verb, autocommit) == ("SELECT", True)
    assert raw.autocommit is False


@pytest.mark.no_transaction
def test_a_read_after_the_session_took_its_connection_stays_on_that_one(app, stored_author):
    with app.app_context():
        engine = db.engine
    with pool_traffic(engine) as seen, app.test_request_context(f"/api/v1/users/{stored_author}"):
        db.session.execute(select(1))
        rows = select_rows(users._public_profile_stmt(), {"user_id": stored_author})
        assert engine.pool.checkedout() == 1
        db.session.remove()
    assert [row.id for row in rows] == [stored_author]
    assert seen["checkouts"] == 1  # never two connections for one request
    (_, first, _), (_, second, _) = seen["statements"]
    assert second is first


@pytest.mark.no_transaction
def test_a_failing_read_on_a_borrowed_connection_is_sqlalchemys_error_and_the_pool_serves_on(app):
    one_over = select(type_coerce(literal_column("1", Integer) / bindparam("zero", type_=Integer), Integer).label("q"))
    with app.app_context():
        engine = db.engine
    with app.test_request_context("/api/v1/posts"):
        with pool_traffic(engine) as seen, pytest.raises(DataError, match="division by zero"):
            select_rows(one_over, {"zero": 0})
        assert engine.pool.checkedout() == 0
        ((_, raw, _),) = seen["statements"]
        assert (raw.closed, raw.autocommit) == (False, False)
        assert select_rows(one_over, {"zero": 1})[0].q == 1


@pytest.mark.no_transaction
def test_a_borrowed_connection_the_server_ends_is_dropped_from_the_pool(app):
    ended = select(func.pg_terminate_backend(func.pg_backend_pid()).label("ended"))
    backend = select(func.pg_backend_pid().label("pid"))
    with app.app_context():
        engine = db.engine
    with app.test_request_context("/api/v1/posts"):
        with pool_traffic(engine) as seen, pytest.raises(OperationalError) as raised:
            select_rows(ended, {})
        assert raised.value.connection_invalidated
        ((_, raw, _),) = seen["statements"]
        assert raw.closed and seen["invalidations"] == 1  # not handed out again
        assert engine.pool.checkedout() == 0
        assert select_rows(backend, {})[0].pid > 0  # the next read has a live connection


ONE = select(literal_column("1", Integer).label("one"))


@pytest.fixture
def behind_pgbouncer(app, test_db_url):
    """The app with PgBouncer's settings (DB_PGBOUNCER: no pool of our own), and its engine."""
    behind = create_app(
        {
            "APP_ENV": "test",
            "REDIS_URL": app.config["REDIS_URL"],
            "DB_PGBOUNCER": True,
            "SQLALCHEMY_DATABASE_URI": test_db_url.render_as_string(hide_password=False),
            "SQLALCHEMY_ENGINE_OPTIONS": engine_options(True),
        }
    )
    with behind.app_context():
        engine = db.engine
    yield behind, engine
    engine.dispose()


@pytest.mark.no_transaction
def test_behind_pgbouncer_a_get_requests_reads_share_the_sessions_one_connection(behind_pgbouncer):
    """With no pool of our own (DB_PGBOUNCER), a borrowed connection would be a new one
    for each read: the request's reads stay on the session's, opened once."""
    behind, engine = behind_pgbouncer
    opened = []

    def connected(*_args):
        opened.append(1)

    event.listen(engine, "connect", connected)
    try:
        with behind.test_request_context("/api/v1/posts"):
            assert [select_rows(ONE, {})[0].one for _ in range(3)] == [1, 1, 1]
            db.session.remove()
    finally:
        event.remove(engine, "connect", connected)
    assert len(opened) == 1


@pytest.mark.no_transaction
def test_behind_pgbouncer_a_write_requests_first_read_opens_no_transaction(behind_pgbouncer):
    """On the session's connection, a read that would begin its transaction runs in
    autocommit: no BEGIN round trip before it, and nothing left to commit after it (a
    new post's followers, read after its commit)."""
    behind, engine = behind_pgbouncer
    with pool_traffic(engine) as seen, behind.test_request_context("/api/v1/posts", method="POST"):
        assert select_rows(ONE, {})[0].one == 1
        raw = db.session.connection().connection.dbapi_connection
        assert raw.info.transaction_status == TransactionStatus.IDLE and not raw.autocommit
        db.session.remove()
    assert [(verb, autocommit) for verb, _, autocommit in seen["statements"]] == [("SELECT", True)]
