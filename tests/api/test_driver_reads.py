"""The hot reads sent straight to psycopg (app/db.py select_rows): the same rows as
SQLAlchemy's execute gives, seen by the engine's cursor events as reads, and errors
as SQLAlchemy raises them."""

from __future__ import annotations

import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import Integer, PickleType, bindparam, column, literal_column, select, text, type_coerce
from sqlalchemy.exc import DataError

from app.db import db, select_rows
from app.posts import service as posts
from app.users import service as users
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
        with pytest.raises(DataError, match="division by zero") as raised:
            select_rows(one_over, {"zero": 0})
        assert "%(zero)s" in raised.value.statement  # the SQL, not the values
        raw = db.session.connection().connection.dbapi_connection
        assert raw.info.transaction_status == TransactionStatus.INERROR
        db.session.rollback()
        assert select_rows(one_over, {"zero": 1})[0].q == 1
        db.session.remove()
