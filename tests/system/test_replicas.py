"""Read replicas (app/replicas.py) against a real streaming replica: a private PostgreSQL
and a replica of it made with pg_basebackup from the same binaries."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from flask_migrate import upgrade
from sqlalchemy import event, text

from app.db import db
from app.factory import create_app
from tests.support.factories import PASSWORD
from tests.support.pg_server import PostgresServer, ReplicaServer

pytestmark = pytest.mark.no_transaction


@pytest.fixture(scope="module")
def servers():
    primary = PostgresServer()
    replica = None
    try:
        replica = ReplicaServer(primary)
        yield primary, replica
    finally:
        if replica is not None:
            replica.cleanup()
        primary.cleanup()


@pytest.fixture(scope="module")
def replicated(app, servers):
    primary, replica = servers
    replicated = create_app(
        {
            "APP_ENV": "test",
            "REDIS_URL": app.config["REDIS_URL"],
            "CELERY_BROKER_URL": app.config["REDIS_URL"],
            "SQLALCHEMY_DATABASE_URI": primary.url.replace("postgresql://", "postgresql+psycopg://"),
            "DATABASE_REPLICA_URLS": [replica.url.replace("postgresql://", "postgresql+psycopg://")],
            "REPLICA_CHECK_SECONDS": 0.1,
            "REPLICA_MAX_LAG_SECONDS": 2.0,
            "RATELIMIT_ENABLED": False,
        }
    )
    with replicated.app_context():
        upgrade()
    wait_until_replayed(replicated)
    yield replicated
    replicated.extensions["replicas"].dispose()
    with replicated.app_context():
        db.engine.dispose()


@pytest.fixture
def state(replicated, servers):
    """Each test starts with the replica replaying and healthy, and the default limits."""
    _, replica = servers
    replicas = replicated.extensions["replicas"]
    replica.resume_replay()
    replicas.max_lag = 2.0
    yield replicas
    replica.resume_replay()


def wait_until_replayed(app, seconds: float = 20) -> None:
    with app.app_context():
        target = db.session.scalar(text("SELECT pg_current_wal_lsn()"))
        db.session.rollback()
    engine = app.extensions["replicas"].replicas[0].engine
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.scalar(text("SELECT pg_last_wal_replay_lsn() >= CAST(:t AS pg_lsn)"), {"t": target}):
                return
        time.sleep(0.05)
    raise AssertionError("the replica did not catch up")


@contextlib.contextmanager
def statements_on(engine):
    """The statements sent to `engine` in the block, but the replicas' health checks."""
    sent: list[str] = []

    def note(_conn, _cursor, statement, *_args):
        if "pg_is_in_recovery()" not in statement:  # the health checks are not reads of data
            sent.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", note)


def served_by_replica(app, read, tries: int = 30):
    """Run `read` until the replica serves it (its health estimate errs on the side of
    the primary right after new WAL arrives); returns the replica's statements for it."""
    _, replica = engines(app)
    for _ in range(tries):
        with statements_on(replica) as on_replica:
            read()
        if on_replica:
            return on_replica
        time.sleep(0.1)
    raise AssertionError("the replica never served the read")


def engines(app):
    with app.app_context():
        return db.engine, app.extensions["replicas"].replicas[0].engine


_names = iter(range(10**6))


def signed_up(client) -> tuple[int, dict]:
    name = f"rep{next(_names)}_{int(time.time() * 1000) % 10**8}"
    created = client.post(
        "/api/v1/auth/register", json={"username": name, "email": f"{name}@example.com", "password": PASSWORD}
    )
    assert created.status_code == 201, created.get_json()
    pair = client.post("/api/v1/auth/login", json={"login": name, "password": PASSWORD}).get_json()
    return created.get_json()["id"], {"Authorization": f"Bearer {pair['access_token']}"}


def authors_posts(client, author_id, headers=None) -> list[str]:
    answer = client.get(f"/api/v1/posts?author={author_id}&limit=5", headers=headers or {})
    assert answer.status_code == 200, answer.get_json()
    return [post["title"] for post in answer.get_json()["items"]]


def test_reads_go_to_the_replica_and_writes_to_the_primary(replicated, state):
    client = replicated.test_client()
    primary, _ = engines(replicated)
    with statements_on(primary) as on_primary:
        author, headers = signed_up(client)
        assert client.post("/api/v1/posts", json={"title": "t", "body": "b"}, headers=headers).status_code == 201
    assert any(s.lstrip().upper().startswith("INSERT") for s in on_primary)
    wait_until_replayed(replicated)
    with statements_on(primary) as on_primary:
        served_by_replica(replicated, lambda: authors_posts(client, author) == ["t"] or pytest.fail("stale"))
    assert not on_primary


def test_a_writer_reads_its_writes_while_the_replica_is_behind(replicated, state, servers):
    _, replica_server = servers
    client = replicated.test_client()
    author, headers = signed_up(client)
    _, reader = signed_up(client)
    wait_until_replayed(replicated)
    state.max_lag = 3600  # behind, but still accepted: only read-your-writes keeps it away
    replica_server.pause_replay()
    assert client.post("/api/v1/posts", json={"title": "fresh", "body": "b"}, headers=headers).status_code == 201
    time.sleep(0.2)  # past a health check, so the replica's position is known to be behind
    assert authors_posts(client, author, headers) == ["fresh"]  # the writer: from the primary
    assert authors_posts(client, author) == []  # anyone else: from the replica, behind
    assert authors_posts(client, author, reader) == []
    replica_server.resume_replay()
    wait_until_replayed(replicated)
    time.sleep(0.2)
    assert authors_posts(client, author) == ["fresh"]
    # caught up: the replica serves the writer again
    served_by_replica(replicated, lambda: authors_posts(client, author, headers) == ["fresh"] or pytest.fail("stale"))


def test_a_replica_past_the_lag_limit_is_skipped(replicated, state, servers):
    _, replica_server = servers
    client = replicated.test_client()
    author, headers = signed_up(client)
    wait_until_replayed(replicated)
    state.max_lag = 0.5
    replica_server.pause_replay()
    assert client.post("/api/v1/posts", json={"title": "late", "body": "b"}, headers=headers).status_code == 201
    time.sleep(1.0)  # the replica has received the post but not replayed it for longer than 0.5 s
    _, replica = engines(replicated)
    with statements_on(replica) as on_replica:
        assert authors_posts(client, author) == ["late"]
    assert not on_replica


def test_a_pulled_authors_follower_caches_no_page_the_replica_has_not_caught_up_with(
    replicated, state, servers, redis_client, monkeypatch
):
    """The author's post moves its mark at once; a follower who reads from a replica that
    has not replayed the post notes the new mark and gets a page without it. That page
    is not cached (the mark moved under TOMBSTONE_SECONDS ago), so once the replica has
    caught up the follower sees the post."""
    from app import cache

    _, replica_server = servers
    monkeypatch.setitem(replicated.config, "FEED_PULL_THRESHOLD", 1)
    client = replicated.test_client()
    author, author_headers = signed_up(client)
    fan, fan_headers = signed_up(client)
    assert client.put(f"/api/v1/users/{author}/follow", headers=fan_headers).status_code in (200, 204)
    assert client.post("/api/v1/posts", json={"title": "first", "body": "b"}, headers=author_headers).status_code == 201
    wait_until_replayed(replicated)
    state.max_lag = 3600  # behind, but still read from
    replica_server.pause_replay()
    new = client.post("/api/v1/posts", json={"title": "second", "body": "b"}, headers=author_headers)
    assert new.status_code == 201
    time.sleep(0.2)  # past a health check: the replica is known to be behind
    redis_client.delete(cache.tombstone_key(cache.feed_key(fan)))  # the follow's, as if seconds had passed

    def titles() -> list[str]:
        answer = client.get("/api/v1/feed", headers=fan_headers)
        assert answer.status_code == 200, answer.get_json()
        return [post["title"] for post in answer.get_json()["items"]]

    _, replica = engines(replicated)
    with statements_on(replica) as on_replica:
        assert titles() == ["first"]  # the replica's, behind
    assert on_replica
    assert not redis_client.exists(cache.feed_key(fan))
    replica_server.resume_replay()
    wait_until_replayed(replicated)
    assert titles() == ["second", "first"]


def test_account_and_revocation_checks_never_read_the_replica(replicated, state):
    client = replicated.test_client()
    _, headers = signed_up(client)
    wait_until_replayed(replicated)
    on_replica = served_by_replica(
        replicated, lambda: client.get("/api/v1/jobs", headers=headers).status_code == 200 or pytest.fail("not 200")
    )
    assert not [s for s in on_replica if "FROM users" in s or "revoked" in s or "auth_sessions" in s]


def test_a_replica_stopped_under_load_costs_no_request(replicated, state, servers):
    _, replica_server = servers
    client = replicated.test_client()
    author, headers = signed_up(client)
    assert client.post("/api/v1/posts", json={"title": "load", "body": "b"}, headers=headers).status_code == 201
    wait_until_replayed(replicated)
    served_by_replica(replicated, lambda: authors_posts(client, author))
    statuses: list[int] = []
    stop = threading.Event()

    def read():
        reader = replicated.test_client()
        while not stop.is_set():
            answer = reader.get(f"/api/v1/posts?author={author}&limit=5")
            statuses.append(answer.status_code)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        replica_server.stop()
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    try:
        assert len(statuses) > 20
        assert set(statuses) == {200}
        # a process that still believes the replica well: the read fails there, and is
        # answered from the primary
        (replica,) = state.replicas
        replica.healthy, replica.checked_at = True, time.monotonic() + 3600
        primary, _ = engines(replicated)
        with statements_on(primary) as on_primary:
            assert authors_posts(client, author) == ["load"]
        assert on_primary
        assert not replica.healthy
    finally:
        replica.checked_at = float("-inf")
        replica_server.start()
    served_by_replica(replicated, lambda: authors_posts(client, author), tries=100)  # back once a check finds it well
