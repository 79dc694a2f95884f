"""Writes that are one statement committed in its own round trip (app/db.py
commit_statement), as they run outside the test harness's transaction: in autocommit on
a pooled connection (the session's, or one borrowed past it when the session holds
none), which is handed back as it was taken."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import bindparam, text, update
from sqlalchemy.exc import DataError, OperationalError

from app import cache, queue
from app.auth import revocation
from app.db import commit_statement, db
from app.errors import QUERY_CANCELED
from app.models import User
from app.users import service as users_service
from tests.support.counting import pool_traffic
from tests.support.factories import FollowFactory, UserFactory
from tests.support.sessions import open_session
from worker import tasks

pytestmark = pytest.mark.no_transaction

POSTS = "/api/v1/posts"


@pytest.fixture(autouse=True)
def _mirror_ready(app, redis_client):
    """The revocation mirror complete, as once a worker has built it: a write's account
    check then sends PostgreSQL nothing before the write."""
    with app.app_context():
        revocation.rebuild_mirror()


def signed_in(app, client, **fields) -> tuple[int, dict]:
    """A user and their bearer header, already used by a read, so that this process has
    verified the token before the request under test."""
    with app.app_context():
        user = UserFactory(**fields)
        user_id, headers = user.id, {"Authorization": f"Bearer {open_session(user)['access_token']}"}
    assert client.get("/api/v1/feed", headers=headers).status_code == 200
    return user_id, headers


def waiting_backend(app, fragment: str, seconds: float = 10) -> tuple[int, str]:
    """The process id and the text PostgreSQL holds for the backend that waits on a lock
    in a statement containing `fragment`: everything the client had sent as that query."""
    with app.app_context():
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = db.session.execute(
                text(
                    "SELECT pid, query FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND position(:f IN query) > 0"
                ),
                {"f": fragment},
            ).first()
            db.session.rollback()
            if found:
                return found.pid, found.query
            time.sleep(0.02)
    raise AssertionError(f"no backend waited on a lock in {fragment!r}")


def sent_while_blocked(app, client, user_id: int, fragment: str, method: str, url: str, body=None, headers=None):
    """Send the request while `user_id`'s row is locked here: the query PostgreSQL holds
    for it as it waits (waiting_backend), and the response once the lock is gone."""
    answers = []
    with app.app_context():
        holder = db.engine.connect()
    try:
        holder.execute(text("SELECT 1 FROM users WHERE id = :id FOR UPDATE"), {"id": user_id})
        writer = threading.Thread(
            target=lambda: answers.append(client.open(url, method=method, json=body, headers=headers))
        )
        writer.start()
        _, query = waiting_backend(app, fragment)
    finally:
        holder.rollback()
        holder.close()
    writer.join(timeout=30)
    assert answers, "the request did not finish"
    return query, answers[0]


def statement_alone(query: str) -> bool:
    """Whether a query is one statement, with no BEGIN before it nor COMMIT after it."""
    parts = [part for part in query.split(";") if part.strip()]
    return len(parts) == 1 and parts[0].split()[0] not in ("BEGIN", "COMMIT")


def test_a_new_post_is_one_statement_committed_as_it_ends(app, committed, client):
    """While the post waits for its author's row (locked here), PostgreSQL holds the
    statement alone (no BEGIN, no COMMIT), sent in autocommit: PostgreSQL commits it as
    it ends, so the row lock is not kept over another round trip and whatever the web
    worker does in between."""
    author_id, headers = signed_in(app, client)
    with app.app_context():
        engine = db.engine
    body = {"title": "t", "body": "b"}
    with pool_traffic(engine) as seen:
        query, answer = sent_while_blocked(app, client, author_id, "INSERT INTO posts", "POST", POSTS, body, headers)
    assert statement_alone(query) and query.lstrip().startswith("WITH"), query
    writes = [autocommit for verb, _, autocommit in seen["statements"] if verb == "WITH"]
    assert writes == [True]
    assert answer.status_code == 201, answer.get_json()
    with app.app_context():
        stored = db.session.execute(
            text(
                "SELECT u.post_count, count(p.id) FROM users u LEFT JOIN posts p ON p.author_id = u.id"
                " WHERE u.id = :id GROUP BY u.id"
            ),
            {"id": author_id},
        ).one()
    assert tuple(stored) == (1, 1)


def queued(redis_client, task: str) -> list[list]:
    """The arguments of each `task` queued on the short queue."""
    messages = [json.loads(message) for message in redis_client.lrange(queue.SHORT, 0, -1)]
    return [json.loads(base64.b64decode(m["body"]))[0] for m in messages if m["headers"]["task"] == task]


def feed_cached(client, headers, redis_client, user_id: int) -> list[int]:
    """The ids on the user's first feed page, read so that it is cached now."""
    response = client.get("/api/v1/feed", headers=headers)
    assert response.status_code == 200, response.get_json()
    assert redis_client.exists(cache.feed_key(user_id))
    return [post["id"] for post in response.get_json()["items"]]


def test_a_post_reads_its_followers_in_its_own_statement(app, committed, client, redis_client):
    """The followers whose feed pages a post drops come back from the post's statement:
    the request sends PostgreSQL nothing else."""
    author_id, headers = signed_in(app, client)
    fan_id, fan_headers = signed_in(app, client)
    with app.app_context():
        FollowFactory(follower_id=fan_id, followed_id=author_id)
        engine = db.engine
    assert feed_cached(client, fan_headers, redis_client, fan_id) == []
    with pool_traffic(engine) as seen:
        answer = client.post(POSTS, json={"title": "t", "body": "b"}, headers=headers)
    assert answer.status_code == 201, answer.get_json()
    assert [verb for verb, _, _ in seen["statements"]] == ["WITH"]
    assert not redis_client.exists(cache.feed_key(fan_id))
    assert feed_cached(client, fan_headers, redis_client, fan_id) == [answer.get_json()["id"]]


def test_a_follow_committed_while_a_post_waits_for_its_author_is_told_of_the_post(app, committed, client, redis_client):
    """The post's statement reads the followers in its snapshot, taken before it waits
    for the author's row. A follow that commits meanwhile (here, one held open on that
    row) is not among them: the post sees the row's follows_version moved and reads the
    followers again after its commit, so the new follower's cached page goes too."""
    author_id, headers = signed_in(app, client)
    fan_id, fan_headers = signed_in(app, client)
    assert feed_cached(client, fan_headers, redis_client, fan_id) == []
    answers = []
    with app.app_context():
        holder = db.engine.connect()
    try:
        follow = {"follower": fan_id, "followed": author_id, "delta": 1}
        assert holder.execute(users_service._FOLLOW, follow).one().changed
        writer = threading.Thread(
            target=lambda: answers.append(client.post(POSTS, json={"title": "t", "body": "b"}, headers=headers))
        )
        writer.start()
        waiting_backend(app, "INSERT INTO posts")
        holder.commit()
    finally:
        holder.close()
    writer.join(timeout=30)
    assert answers and answers[0].status_code == 201, answers and answers[0].get_json()
    assert not redis_client.exists(cache.feed_key(fan_id))
    assert feed_cached(client, fan_headers, redis_client, fan_id) == [answers[0].get_json()["id"]]


def test_a_change_whose_followers_cannot_be_read_after_its_commit_is_answered(app, committed, client, redis_client):
    """A deleted post's followers are read after its commit. When that read fails (here
    cancelled, as statement_timeout would), the request still answers 204 for the
    stored change, so a client has nothing to send again; the author's entries go at
    once, and a worker reads the followers and drops their feed pages."""
    author_id, headers = signed_in(app, client)
    fan_id, fan_headers = signed_in(app, client)
    with app.app_context():
        FollowFactory(follower_id=fan_id, followed_id=author_id)
    created = client.post(POSTS, json={"title": "t", "body": "b"}, headers=headers).get_json()
    assert feed_cached(client, fan_headers, redis_client, fan_id) == [created["id"]]
    assert client.get(f"{POSTS}/{created['id']}").status_code == 200
    assert redis_client.exists(cache.post_key(created["id"]))
    answers = []
    with app.app_context():
        holder = db.engine.connect()
    try:
        holder.execute(text("LOCK TABLE follows IN ACCESS EXCLUSIVE MODE"))
        writer = threading.Thread(
            target=lambda: answers.append(client.delete(f"{POSTS}/{created['id']}", headers=headers))
        )
        writer.start()
        pid, _ = waiting_backend(app, "array_agg(follower_id)")
        holder.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": pid})
        writer.join(timeout=30)
    finally:
        holder.rollback()
        holder.close()
    assert answers and answers[0].status_code == 204, answers and answers[0].get_json()
    with app.app_context():
        left = db.session.execute(text("SELECT count(*) FROM posts WHERE author_id = :id"), {"id": author_id})
        assert left.scalar_one() == 0
    assert not redis_client.exists(cache.post_key(created["id"]))  # dropped by the request
    assert redis_client.exists(cache.feed_key(fan_id))  # not yet: the worker's part
    keys = [cache.post_key(created["id"]), cache.profile_key(author_id)]
    assert queued(redis_client, queue.POSTS_CHANGED) == [[author_id, keys]]

    with app.app_context():
        tasks.posts_changed.run(author_id, keys)
    assert not redis_client.exists(cache.feed_key(fan_id))
    assert feed_cached(client, fan_headers, redis_client, fan_id) == []


def test_a_follow_and_a_profile_change_are_one_statement_each_too(app, committed, client):
    follower_id, headers = signed_in(app, client)
    with app.app_context():
        followed_id, engine = UserFactory().id, db.engine
    for method, url, body, fragment, verb in [
        ("PUT", f"/api/v1/users/{followed_id}/follow", None, "INSERT INTO follows", "WITH"),
        ("PATCH", "/api/v1/users/me", {"bio": "changed"}, "UPDATE users SET", "UPDATE"),
    ]:
        with pool_traffic(engine) as seen:
            query, answer = sent_while_blocked(app, client, follower_id, fragment, method, url, body, headers)
        assert statement_alone(query), query
        assert [autocommit for sent, _, autocommit in seen["statements"] if sent == verb] == [True]
        assert answer.status_code in (200, 204), answer.get_json()
    with app.app_context():
        row = db.session.execute(
            text("SELECT following_count, bio FROM users WHERE id = :id"), {"id": follower_id}
        ).one()
    assert tuple(row) == (1, "changed")


def test_text_full_of_sql_and_quoting_is_stored_as_sent(app, committed, client):
    """The parameters travel apart from the statement (psycopg's extended protocol)."""
    _, headers = signed_in(app, client)
    title = "'; DROP TABLE posts; -- \\' \" %s %(title)s $$ $1"
    body = "E'\\n' \\x00 back\\slash 100% ;\nCOMMIT; ROLLBACK; \U0001f600 \u00e9\u0301 {} ::text"
    created = client.post(POSTS, json={"title": title, "body": body}, headers=headers)
    assert created.status_code == 201, created.get_json()
    assert (created.get_json()["title"], created.get_json()["body"]) == (title, body)
    read = client.get(f"{POSTS}/{created.get_json()['id']}").get_json()
    assert (read["title"], read["body"]) == (title, body)
    with app.app_context():
        assert db.session.scalar(text("SELECT count(*) FROM posts")) == 1


def test_a_statement_that_fails_writes_nothing_and_the_connection_is_left_as_it_was(app, committed):
    with app.app_context():
        user_id = UserFactory(bio="before").id
    with app.test_request_context(POSTS, method="POST"):
        raw = db.session.connection().connection.dbapi_connection
        assert not raw.autocommit and raw.info.transaction_status == TransactionStatus.IDLE
        failing = text("UPDATE users SET bio = 'after' WHERE id = :id AND 1 / :zero = 1")
        with pytest.raises(DataError, match="division by zero"):
            commit_statement(failing, {"id": user_id, "zero": 0})
        assert not raw.autocommit and raw.info.transaction_status == TransactionStatus.IDLE
        db.session.rollback()
        assert db.session.scalar(text("SELECT bio FROM users WHERE id = :id"), {"id": user_id}) == "before"
        # the same connection writes again, and commits
        change = text("UPDATE users SET bio = 'after' WHERE id = :id RETURNING bio")
        assert commit_statement(change, {"id": user_id}) == ("after",)
        assert db.session.scalar(text("SELECT bio FROM users WHERE id = :id"), {"id": user_id}) == "after"
        db.session.remove()


def test_a_write_stopped_by_its_timeout_is_the_503_kind_of_error(app, committed):
    """A statement cut off by statement_timeout comes out as SQLAlchemy's OperationalError
    with PostgreSQL's code (app/errors.py answers it 503), and nothing of it stays."""
    with app.app_context():
        user_id = UserFactory(bio="before").id
    with app.test_request_context(POSTS, method="POST"):
        db.session.execute(text("SET statement_timeout = 50"))  # until the rollback below
        raw = db.session.connection().connection.dbapi_connection
        change = text("UPDATE users SET bio = 'after' WHERE id = :id AND pg_sleep(2) IS NOT NULL")
        with pytest.raises(OperationalError) as stopped:
            commit_statement(change, {"id": user_id})
        assert stopped.value.orig.sqlstate == QUERY_CANCELED
        assert raw.info.transaction_status == TransactionStatus.INERROR
        db.session.rollback()
        assert not raw.autocommit and raw.info.transaction_status == TransactionStatus.IDLE
        assert db.session.scalar(text("SELECT bio FROM users WHERE id = :id"), {"id": user_id}) == "before"
        assert db.session.scalar(text("SHOW statement_timeout")) == "15s"
        db.session.remove()


def test_a_deleted_posts_request_ends_with_commit_keeping_prepared_statements(app, committed, client):
    """After the delete commits, the followers whose feed pages it drops are read in
    autocommit (a borrowed connection): the request ends with the delete's COMMIT, and
    no ROLLBACK makes psycopg drop every prepared statement of the connection."""
    from sqlalchemy import event

    _author_id, headers = signed_in(app, client)
    post_id = client.post(POSTS, json={"title": "t", "body": "b"}, headers=headers).get_json()["id"]
    ends = []
    with app.app_context():
        engine = db.engine
    listeners = {"commit": lambda _conn: ends.append("COMMIT"), "rollback": lambda _conn: ends.append("ROLLBACK")}
    for name, listener in listeners.items():
        event.listen(engine, name, listener)
    try:
        with pool_traffic(engine) as seen:
            assert client.delete(f"{POSTS}/{post_id}", headers=headers).status_code == 204
    finally:
        for name, listener in listeners.items():
            event.remove(engine, name, listener)
    assert ends == ["COMMIT"]  # the delete's
    assert ("SELECT", True) in [(verb, autocommit) for verb, _, autocommit in seen["statements"]]


BIO = update(User).where(User.id == bindparam("id")).values(bio=bindparam("bio")).returning(User.bio)
BIO_OVER_ZERO = update(User).where(User.id == bindparam("id")).values(bio="x", post_count=User.post_count / 0)


def bio_of(app, user_id: int) -> str:
    with app.app_context():
        bio = db.session.scalar(text("SELECT bio FROM users WHERE id = :id"), {"id": user_id})
        db.session.remove()
    return bio


def test_a_write_requests_statement_goes_on_a_borrowed_connection_in_autocommit(app, committed):
    with app.app_context():
        user_id, engine = UserFactory(bio="before").id, db.engine
    with pool_traffic(engine) as seen, app.test_request_context("/api/v1/users/me", method="PATCH"):
        row = commit_statement(BIO, {"id": user_id, "bio": "after"})
        assert not db.session().in_transaction()  # the session took no connection
        assert engine.pool.checkedout() == 0
    assert row.bio == "after" and bio_of(app, user_id) == "after"
    assert (seen["checkouts"], seen["checkins"]) == (1, 1)
    ((verb, raw, autocommit),) = seen["statements"]
    assert (verb, autocommit) == ("UPDATE", True)  # committed as it ends
    assert not raw.autocommit and raw.info.transaction_status == TransactionStatus.IDLE


def test_a_failing_write_on_a_borrowed_connection_writes_nothing_and_the_connection_serves_on(app, committed):
    with app.app_context():
        user_id, engine = UserFactory(bio="before").id, db.engine
    with app.test_request_context(POSTS, method="POST"):
        with pool_traffic(engine) as seen, pytest.raises(DataError, match="division by zero"):
            commit_statement(BIO_OVER_ZERO, {"id": user_id})
        assert engine.pool.checkedout() == 0
    ((_, raw, _),) = seen["statements"]
    assert not raw.autocommit and raw.info.transaction_status == TransactionStatus.IDLE
    assert seen["invalidations"] == 0  # rolled back, not thrown away
    assert bio_of(app, user_id) == "before"


def test_a_session_with_something_to_flush_keeps_the_write_on_its_connection(app, committed):
    """An object added to the session is flushed by the session's commit, as before:
    the write does not go past the session."""
    with app.app_context():
        user_id = UserFactory(bio="before").id
    with app.test_request_context(POSTS, method="POST"):
        db.session.add(UserFactory.build(username="added_before_the_write"))
        commit_statement(BIO, {"id": user_id, "bio": "after"})
        db.session.remove()
    with app.app_context():
        added = db.session.scalar(text("SELECT count(*) FROM users WHERE username = 'added_before_the_write'"))
        db.session.remove()
    assert (added, bio_of(app, user_id)) == (1, "after")


def test_a_write_run_often_is_prepared_on_its_connection(app, committed):
    """psycopg prepares a statement it has run a few times on a connection: PostgreSQL
    then neither parses nor plans the write again there."""
    with app.app_context():
        user_id, engine = UserFactory(bio="before").id, db.engine
    runs: dict = {}
    with pool_traffic(engine) as seen, app.test_request_context("/api/v1/users/me", method="PATCH"):
        for number in range(60):
            commit_statement(BIO, {"id": user_id, "bio": f"edit {number}"})
            (_, raw, _) = seen["statements"][-1]
            runs[raw] = runs.get(raw, 0) + 1
            if runs[raw] > raw.prepare_threshold:
                break
    assert runs[raw] > raw.prepare_threshold, runs
    raw.autocommit = True  # idle in the pool: asked here, outside any transaction
    try:
        prepared = raw.execute("SELECT statement FROM pg_prepared_statements").fetchall()
    finally:
        raw.autocommit = False
    assert any(statement.startswith("UPDATE users SET bio") for (statement,) in prepared), prepared
    assert bio_of(app, user_id) == f"edit {number}"
