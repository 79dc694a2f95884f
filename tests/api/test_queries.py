"""No N+1: each list endpoint runs the same number of queries for 1 item as for 100."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from app import cache
from app.db import db
from app.models import User
from tests.support.factories import FollowFactory, PostFactory, UserFactory


def queries_for(client, count_queries, url, headers, expect_items: int) -> int:
    """The queries of a cold read: nothing cached (the factories write past the services,
    which would drop the cached lists), nothing already loaded."""
    cache.clear()
    db.session.expunge_all()
    with count_queries() as counter:
        response = client.get(url, headers=headers or {})
    assert response.status_code == 200
    items = response.get_json()["items"]
    assert len(items) == expect_items > 0
    return counter.count


@pytest.fixture
def reader():
    return UserFactory()


def _followed_authors(reader_id: int, n: int, posts_each: int = 1):
    for _ in range(n):
        author = UserFactory()
        FollowFactory(follower_id=reader_id, followed_id=author.id)
        PostFactory.create_batch(posts_each, author=author)


@pytest.mark.parametrize(
    ("url", "grow", "first", "budget"),
    [
        # users: the ids, then the profiles and the newest posts not yet cached (the reader
        # is listed too)
        (
            "/api/v1/users?include=posts&limit=100",
            lambda r, n: [PostFactory.create_batch(6, author=UserFactory()) for _ in range(n)],
            2,
            3,
        ),
        # lists of posts: the ids, then the posts not yet cached
        ("/api/v1/posts?limit=100", lambda r, n: PostFactory.create_batch(n), 1, 2),
        # + the caller's active flag, and the revocation check (with no revocation mirror in
        # Redis, as here, both ask SQL)
        ("/api/v1/feed?limit=100", lambda r, n: _followed_authors(r, n), 1, 4),
        (
            "/api/v1/users/{reader}/followers?limit=100",
            lambda r, n: [FollowFactory(followed_id=r) for _ in range(n)],
            1,
            2,
        ),
        (
            "/api/v1/users/{reader}/following?limit=100",
            lambda r, n: [FollowFactory(follower_id=r) for _ in range(n)],
            1,
            2,
        ),
        (
            "/api/v1/users/{reader}/posts?limit=100",
            lambda r, n: PostFactory.create_batch(n, author=db.session.get(User, r)),
            1,
            3,
        ),
    ],
)
def test_list_query_count_does_not_grow_with_the_page(client, count_queries, login, reader, url, grow, first, budget):
    """`first` items after one growth, then a full page of 100."""
    reader_id = reader.id
    url = url.format(reader=reader_id)
    headers = login(reader)
    grow(reader_id, 1)
    small = queries_for(client, count_queries, url, headers, expect_items=first)
    grow(reader_id, 99)
    large = queries_for(client, count_queries, url, headers, expect_items=100)
    assert small == large
    assert large <= budget


def test_users_with_posts_a_full_page_in_three_queries_cold_and_none_warm(client, count_queries):
    for _ in range(100):
        PostFactory.create_batch(6, author=UserFactory())
    db.session.expunge_all()
    with count_queries() as counter:
        cold = client.get("/api/v1/users?include=posts&limit=100").get_json()
    assert counter.count == 3
    assert [len(user["posts"]) for user in cold["items"]] == [5] * 100
    with count_queries() as counter:
        warm = client.get("/api/v1/users?include=posts&limit=100").get_json()
    assert counter.count == 0  # the first page of ids is cached too
    assert warm == cold


def test_a_warm_first_page_of_posts_needs_no_query_and_a_later_page_one(client, count_queries):
    PostFactory.create_batch(30)
    cold = client.get("/api/v1/posts?limit=20").get_json()
    db.session.expunge_all()
    with count_queries() as counter:
        warm = client.get("/api/v1/posts?limit=20").get_json()
    assert warm == cold
    assert counter.count == 0
    client.get(f"/api/v1/posts?limit=5&cursor={cold['next_cursor']}")  # its posts cached
    with count_queries() as counter:
        later = client.get(f"/api/v1/posts?limit=5&cursor={cold['next_cursor']}").get_json()
    assert len(later["items"]) == 5
    assert counter.count == 1  # the index scan after the cursor


def test_a_warm_first_feed_page_needs_no_query(client, count_queries, login):
    """The account check answers from this process's memo (the mirror says nothing
    changed), and the page and its posts from the cache."""
    from app.auth import revocation

    revocation.rebuild_mirror()  # revocations answered by Redis, as once a worker ran
    reader = UserFactory()
    _followed_authors(reader.id, 3, posts_each=2)
    headers = login(reader)
    cold = client.get("/api/v1/feed?limit=4", headers=headers).get_json()
    db.session.expunge_all()
    with count_queries() as counter:
        warm = client.get("/api/v1/feed?limit=4", headers=headers).get_json()
    assert warm == cold and len(warm["items"]) == 4
    assert counter.statements == []


@pytest.mark.no_transaction
def test_reads_run_without_a_transaction_writes_in_one(app, client):
    """GET requests query in autocommit (no BEGIN / ROLLBACK round trips); any other
    method keeps its one transaction. (The other tests run inside a rolled-back
    transaction of their own, so this one uses the app's real session.)"""
    from sqlalchemy import event, select

    seen = []

    def record(conn, _cursor, statement, *_args):
        seen.append((statement.split()[0], conn.connection.dbapi_connection.autocommit))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        assert client.get("/api/v1/posts").status_code == 200
        assert seen and all(autocommit for _, autocommit in seen)
        seen.clear()
        with app.test_request_context("/api/v1/posts", method="POST"):
            db.session.execute(select(1))
            db.session.remove()
        assert seen == [("SELECT", False)]
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_new_post_is_answered_from_the_insert_not_read_back(client, count_queries, login):
    """The 201 body is the row the INSERT returned (server defaults included) and the
    author already loaded for the token: no query reads the post back."""
    author = UserFactory()
    headers = login(author)
    with count_queries() as counter:
        response = client.post("/api/v1/posts", json={"title": "Fresh", "body": "Just written."}, headers=headers)
    assert response.status_code == 201
    assert [s for s in counter.statements if s.startswith("SELECT") and "FROM posts" in s] == []
    created = response.get_json()
    assert created == client.get(f"/api/v1/posts/{created['id']}").get_json()  # what was stored
    assert created["author"] == {"id": author.id, "username": author.username, "display_name": author.display_name}


def _select_user(user_id):
    from sqlalchemy import select

    db.session.execute(select(User.id).where(User.id == user_id))


def _select_through_a_cte(user_id):
    from sqlalchemy import select

    chosen = select(User.id).where(User.id == user_id).cte("chosen")
    db.session.execute(select(chosen.c.id))


def _select_a_union(user_id):
    from sqlalchemy import select, union_all

    db.session.execute(union_all(select(User.id).where(User.id == user_id), select(User.id).where(User.id == 0)))


def _select_textual_columns(user_id):
    from sqlalchemy import column, text

    db.session.execute(text("SELECT id FROM users WHERE id = :id").columns(column("id")), {"id": user_id})


def _select_rows_past_sqlalchemys_execute(user_id):
    from sqlalchemy import bindparam, select

    from app.db import select_rows

    _select_user(user_id)  # the transaction begun on the server: the read runs in it
    select_rows(select(User.id).where(User.id == bindparam("id")), {"id": user_id})


def _select_rows_outside_a_transaction(user_id):
    from sqlalchemy import bindparam, select

    from app.db import select_rows

    select_rows(select(User.id).where(User.id == bindparam("id")), {"id": user_id})  # in autocommit


def _update_user(user_id):
    from sqlalchemy import update

    db.session.execute(update(User).where(User.id == user_id).values(bio="never committed"))


def _pending_change(user_id):
    db.session.get(User, user_id).bio = "pending, not flushed"


def _flushed_change_then_select(user_id):
    db.session.get(User, user_id).bio = "flushed, never committed"
    db.session.flush()
    _select_user(user_id)


def _bare_text_select(_user_id):
    from sqlalchemy import text

    db.session.execute(text("select 1"))


def _text_update_behind_a_comment(user_id):
    from sqlalchemy import text

    db.session.execute(text("/* no SELECT */ update users set bio = 'never committed' where id = :id"), {"id": user_id})


def _update_in_a_cte(user_id):
    from sqlalchemy import text

    db.session.execute(
        text(
            "WITH changed AS (UPDATE users SET bio = 'never committed' WHERE id = :id RETURNING id) SELECT id FROM changed"
        ),
        {"id": user_id},
    )


def _driver_sql_update(user_id):
    db.session.connection().exec_driver_sql(
        "UPDATE users SET bio = 'never committed' WHERE id = %(id)s", {"id": user_id}
    )


@pytest.mark.no_transaction
@pytest.mark.parametrize(
    ("run", "end"),
    [
        (_select_user, "COMMIT"),
        (_select_through_a_cte, "COMMIT"),
        (_select_a_union, "COMMIT"),
        (_select_textual_columns, "COMMIT"),
        (_select_rows_past_sqlalchemys_execute, "COMMIT"),
        (_select_rows_outside_a_transaction, None),  # on a borrowed connection: no transaction to end
        (_update_user, "ROLLBACK"),
        (_pending_change, "ROLLBACK"),
        (_flushed_change_then_select, "ROLLBACK"),
        (_bare_text_select, "ROLLBACK"),  # no SELECT construct: taken for a write
        (_text_update_behind_a_comment, "ROLLBACK"),
        (_update_in_a_cte, "ROLLBACK"),
        (_driver_sql_update, "ROLLBACK"),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else value,
)
def test_a_write_request_ends_a_transaction_that_only_read_with_commit(app, committed, run, end):
    """psycopg drops a connection's prepared statements at every ROLLBACK, so a request
    whose open transaction only read ends it with COMMIT; one that wrote, or has
    changes not yet flushed, still rolls back. A read is told by the statement
    SQLAlchemy compiled (a SELECT construct), not by the SQL text. A read that
    select_rows sends while the session has no transaction opens none."""
    from sqlalchemy import event

    ends = []
    with app.app_context():
        engine = db.engine
        user = UserFactory()
        db.session.commit()
        user_id, bio = user.id, user.bio
        db.session.remove()
    listeners = {"commit": lambda _conn: ends.append("COMMIT"), "rollback": lambda _conn: ends.append("ROLLBACK")}
    for name, listener in listeners.items():
        event.listen(engine, name, listener)
    try:
        with app.test_request_context("/api/v1/posts", method="POST"):
            run(user_id)
            db.session.remove()
        assert ends == ([end] if end else [])
    finally:
        for name, listener in listeners.items():
            event.remove(engine, name, listener)
    with app.app_context():
        assert db.session.get(User, user_id).bio == bio  # no change was kept


def test_psycopg_drops_prepared_statements_at_rollback_and_keeps_them_at_commit(test_db_url):
    """Why a read-only transaction ends with COMMIT (ReadsWithoutTransaction.close()):
    should psycopg keep its prepared statements through a ROLLBACK one day, the COMMIT
    is no longer needed."""
    import psycopg

    url = test_db_url.set(drivername="postgresql").render_as_string(hide_password=False)
    prepared = "SELECT count(*) FROM pg_prepared_statements"
    with psycopg.connect(url, prepare_threshold=0) as conn:
        conn.execute("SELECT 1 WHERE %s = 1", [1])  # prepared at its first run
        assert conn.execute(prepared, prepare=False).fetchone()[0] == 1
        conn.commit()
        assert conn.execute(prepared, prepare=False).fetchone()[0] == 1
        conn.rollback()
        assert conn.execute(prepared, prepare=False).fetchone()[0] == 0


def _plan_nodes(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


@pytest.mark.parametrize("walk_min, runs, skipped", [(0, "everyones", "newest"), (10**9, "newest", "everyones")])
def test_a_feed_page_is_walked_or_merged_never_both(app, reader, walk_min, runs, skipped):
    """posts.service._feed_query: for a reader over FEED_WALK_MIN_FOLLOWING the walk of
    everyone's newest posts (`everyones`) finds the page and the per-author merge
    (`newest`) never runs; under it, the walk reads nothing."""
    from app.posts.service import _feed_query

    _followed_authors(reader.id, 3, posts_each=10)
    PostFactory.create_batch(5)  # by others: the walk passes them by
    query = _feed_query()
    connection = db.session.connection()
    first = connection.execute(query._first, {"reader": reader.id, "page_limit": 3, "walk_min": 0, "walk_scan": 100})
    after = first.all()[-1][1:]
    compiled = query._next.compile(dialect=db.engine.dialect)
    params = {"reader": reader.id, "page_limit": 5, "walk_min": walk_min, "walk_scan": 100}
    params.update((f"after_{i}", value) for i, value in enumerate(after))
    explain = f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}"
    (plan,) = connection.exec_driver_sql(explain, compiled.construct_params(params)).scalar_one()
    rows_of = {node["Alias"]: node["Actual Rows"] for node in _plan_nodes(plan["Plan"]) if "Alias" in node}
    assert rows_of[runs] > 0 and rows_of[skipped] == 0, rows_of
    assert plan["Plan"]["Actual Rows"] == 5


def test_a_word_in_a_few_posts_is_estimated_at_a_few_posts(reader):
    """posts.search keeps long statistics (migration 0008): a word in 4 posts of 40,000,
    written in a vocabulary too large for the default list of frequent words, is
    estimated near 4 (about 40 at the default), so the search reads its posts from the
    full-text index instead of walking the newest posts for a page of matches."""
    db.session.execute(text("SELECT setseed(0.5)"))
    db.session.execute(
        text("""
            INSERT INTO posts (author_id, title, body)
            SELECT :author, 'a post', (
                SELECT string_agg('w' || floor(3000 * power(random(), 3))::int || 'x', ' ')
                FROM generate_series(1, 8) WHERE g > 0
            ) FROM generate_series(1, 40000) g
        """),
        {"author": reader.id},
    )
    PostFactory.create_batch(4, author=reader, body="zzrare")
    db.session.execute(text("ANALYZE posts"))
    plan = db.session.scalar(
        text("EXPLAIN (FORMAT JSON) SELECT id FROM posts WHERE search @@ websearch_to_tsquery('english', 'zzrare')")
    )
    assert 1 <= plan[0]["Plan"]["Plan Rows"] <= 12
