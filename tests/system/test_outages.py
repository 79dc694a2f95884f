"""Outages survived, against real servers the tests stop and start: PostgreSQL down
while serving, Redis down while serving, and a load far past the pool's size."""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter

import psycopg
import pytest
from flask_migrate import upgrade
from sqlalchemy import select

from app.config import database_url
from app.db import db
from app.factory import create_app
from app.models import Post
from tests.support.factories import PASSWORD, UserFactory
from tests.support.pg_server import PostgresServer
from tests.support.processes import Web, http, service_env
from tests.support.redis_server import RedisServer
from tests.support.sessions import open_session

PROBLEM = "application/problem+json"


def register_and_log_in(base: str, name: str) -> dict:
    body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
    assert http("POST", f"{base}/api/v1/auth/register", json_body=body)[0] == 201
    status, _, tokens = http("POST", f"{base}/api/v1/auth/login", json_body={"login": name, "password": PASSWORD})
    assert status == 200, tokens
    return tokens


def timed(method: str, url: str, **kwargs):
    started = time.monotonic()
    status, headers, body = http(method, url, **kwargs)
    return status, headers, body, time.monotonic() - started


@pytest.mark.no_transaction
def test_postgres_down_while_serving_then_back_without_a_restart(app, tmp_path):
    pg = PostgresServer()
    web = None
    try:
        migrated = create_app(
            {"APP_ENV": "test", "SQLALCHEMY_DATABASE_URI": database_url(pg.url), "REDIS_URL": app.config["REDIS_URL"]}
        )
        with migrated.app_context():
            upgrade()
            db.engine.dispose()
        web = Web(
            {**os.environ, "APP_ENV": "test", "DATABASE_URL": pg.url, "REDIS_URL": app.config["REDIS_URL"]},
            tmp_path / "web.log",
        ).wait_ready()
        base = web.url("")
        tokens = register_and_log_in(base, "survivor")
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        acknowledged = []
        for i in range(5):
            status, _, post = http(
                "POST", f"{base}/api/v1/posts", json_body={"title": f"before {i}", "body": "b"}, headers=headers
            )
            assert status == 201
            acknowledged.append(post["id"])

        pg.stop()
        for method, path, kwargs in [
            ("GET", "/api/v1/posts", {}),
            ("GET", "/api/v1/users/me", {"headers": headers}),
            ("POST", "/api/v1/posts", {"json_body": {"title": "during", "body": "b"}, "headers": headers}),
            ("POST", "/api/v1/auth/login", {"json_body": {"login": "survivor", "password": PASSWORD}}),
        ]:
            status, response_headers, body, elapsed = timed(method, f"{base}{path}", **kwargs)
            assert status == 503, (path, body)
            assert response_headers["Content-Type"] == PROBLEM and int(response_headers["Retry-After"]) > 0
            assert elapsed < 2, (path, elapsed)
        status, _, body, _ = timed("GET", f"{base}/readyz")
        assert status == 503 and body["checks"]["database"] == "unavailable"
        assert http("GET", f"{base}/healthz")[0] == 200

        pg.start()
        deadline = time.monotonic() + 10
        while http("GET", f"{base}/api/v1/posts")[0] != 200:
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.1)
        status, _, post = http(
            "POST", f"{base}/api/v1/posts", json_body={"title": "after", "body": "b"}, headers=headers
        )
        assert status == 201
        acknowledged.append(post["id"])
        assert http("GET", f"{base}/readyz")[0] == 200
        with psycopg.connect(pg.url) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT id FROM posts")
            stored = {row[0] for row in cursor.fetchall()}
        assert set(acknowledged) <= stored
    finally:
        if web:
            web.stop()
        pg.cleanup()


@pytest.mark.no_transaction
def test_redis_down_while_serving_then_back(app, committed, test_db_url, tmp_path):
    redis_server = RedisServer().start()
    env = service_env(app, test_db_url, REDIS_URL=redis_server.url, RATELIMIT_LOGIN_PER_ACCOUNT_IP="3 per minute")
    web = Web(env, tmp_path / "web.log").wait_ready()
    try:
        base = web.url("")
        kept = register_and_log_in(base, "steady")
        ended = http("POST", f"{base}/api/v1/auth/login", json_body={"login": "steady", "password": PASSWORD})[2]
        assert (
            http("POST", f"{base}/api/v1/auth/logout", headers={"Authorization": f"Bearer {ended['access_token']}"})[0]
            == 204
        )
        headers = {"Authorization": f"Bearer {kept['access_token']}"}
        me = http("GET", f"{base}/api/v1/users/me", headers=headers)[2]
        assert http("GET", f"{base}/api/v1/users/{me['id']}")[0] == 200  # cached

        redis_server.stop()
        assert http("GET", f"{base}/api/v1/users/{me['id']}")[0] == 200  # from PostgreSQL
        assert http("GET", f"{base}/api/v1/posts")[0] == 200
        assert http("POST", f"{base}/api/v1/posts", json_body={"title": "t", "body": "b"}, headers=headers)[0] == 201
        assert http("PATCH", f"{base}/api/v1/users/me", json_body={"bio": "offline edit"}, headers=headers)[0] == 200
        assert (
            http("GET", f"{base}/api/v1/users/me", headers={"Authorization": f"Bearer {ended['access_token']}"})[0]
            == 401
        )  # revocation holds
        logins = [
            http("POST", f"{base}/api/v1/auth/login", json_body={"login": "steady", "password": PASSWORD})[0]
            for _ in range(4)
        ]
        assert logins == [200, 200, 200, 429]  # limits counted in memory

        redis_server.start()  # back, empty
        profile = http("GET", f"{base}/api/v1/users/{me['id']}")[2]
        assert profile["bio"] == "offline edit" and profile["post_count"] == 1
        import redis

        assert redis.Redis.from_url(redis_server.url).exists(f"user:v1:{me['id']}")  # the cache fills again
    finally:
        web.stop()
        redis_server.cleanup()


def _pool_timeouts(web: Web, token: str) -> float:
    """db_pool_timeouts_total on /metrics: the 503s answered for want of a connection,
    added up over the workers."""
    status, _, body = http("GET", web.url("/metrics"), headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    (value,) = re.findall(r"^db_pool_timeouts_total (\S+)$", body.decode(), re.MULTILINE)
    return float(value)


@pytest.mark.no_transaction
def test_200_clients_for_30_seconds_against_a_pool_of_10(app, committed, test_db_url, tmp_path):
    """Two workers with pools of 5 (no overflow) under 200 clients. For a while the test
    itself locks the posts table: each request that reaches it holds its connection until
    the lock goes, so the pools run dry for certain and the requests waiting for a
    connection get 503 + Retry-After in DB_POOL_TIMEOUT. Every other answer is a success,
    no client hangs, every acknowledged write is stored, and the service recovers."""
    seconds, clients, pool_timeout = float(os.environ.get("LOAD_TEST_SECONDS", "30")), 200, 2
    metrics_token = "load-test-metrics"
    env = service_env(
        app,
        test_db_url,
        WEB_CONCURRENCY="2",
        WEB_THREADS="16",
        DB_POOL_SIZE="5",
        DB_MAX_OVERFLOW="0",
        DB_POOL_TIMEOUT=str(pool_timeout),
        METRICS_TOKEN=metrics_token,
    )
    with app.app_context():
        users = UserFactory.create_batch(10)
        tokens = [open_session(user)["access_token"] for user in users]
        user_ids = [user.id for user in users]
    web = Web(env, tmp_path / "web.log", workers=2).wait_ready()
    statuses: Counter = Counter()
    answered_after_release: Counter = Counter()
    bad_503s: list = []
    failures: list[str] = []
    acknowledged: list[int] = []
    lock = threading.Lock()
    refused = threading.Event()
    released_at = [float("inf")]
    deadline = time.monotonic() + seconds

    def client(n: int) -> None:
        rng = random.Random(n)
        headers = {"Authorization": f"Bearer {tokens[n % len(tokens)]}"}
        while time.monotonic() < deadline:
            roll = rng.random()
            started = time.monotonic()
            try:
                if roll < 0.15:
                    status, response_headers, body = http(
                        "POST",
                        web.url("/api/v1/posts"),
                        headers=headers,
                        json_body={"title": f"load {n}", "body": "under load"},
                        timeout=15,
                    )
                    if status == 201:
                        with lock:
                            acknowledged.append(body["id"])
                elif roll < 0.4:
                    status, response_headers, _ = http(
                        "GET", web.url(f"/api/v1/users/{rng.choice(user_ids)}"), timeout=15
                    )
                else:
                    status, response_headers, _ = http("GET", web.url("/api/v1/posts?limit=20"), timeout=15)
            except OSError as exc:  # a timeout is a hang
                with lock:
                    failures.append(repr(exc))
                continue
            with lock:
                statuses[status] += 1
                if started > released_at[0]:
                    answered_after_release[status] += 1
                if status == 503:
                    retry_after = response_headers.get("Retry-After", "")
                    if response_headers.get("Content-Type") != PROBLEM or not retry_after.isdigit():
                        bad_503s.append(response_headers)
                    refused.set()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    url = test_db_url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        for thread in threads:
            thread.start()
        while sum(statuses.values()) < 100 and time.monotonic() < deadline:  # the load is under way
            time.sleep(0.05)
        with psycopg.connect(url) as holder:
            holder.execute("LOCK TABLE posts IN ACCESS EXCLUSIVE MODE")
            # held until the first 503: a pool can stay dry no longer than the requests
            # holding its connections wait (DB_POOL_TIMEOUT at most for the first 503)
            refused.wait(timeout=pool_timeout * 5)
            holder.rollback()
            released_at[0] = time.monotonic()
        for thread in threads:
            thread.join(timeout=seconds + 60)
        assert not any(thread.is_alive() for thread in threads), "clients hung"
        assert failures == []
        assert set(statuses) <= {200, 201, 503}, statuses
        assert statuses[503] > 0, "the pools never ran dry"
        assert bad_503s == []  # each a problem+json with Retry-After
        assert _pool_timeouts(web, metrics_token) == statuses[503]  # all for want of a connection
        assert answered_after_release[200] > 0 and answered_after_release[201] > 0, answered_after_release
        # and once the load is gone the service answers normally
        assert http("GET", web.url("/readyz"))[0] == 200
        assert http("GET", web.url(f"/api/v1/posts?author={user_ids[0]}"))[0] == 200
        headers = {"Authorization": f"Bearer {tokens[0]}"}
        status, _, body = http("POST", web.url("/api/v1/posts"), headers=headers, json_body={"title": "t", "body": "b"})
        assert status == 201
        acknowledged.append(body["id"])
    finally:
        web.stop()
    with app.app_context():
        stored = set(db.session.scalars(select(Post.id)))
    assert set(acknowledged) <= stored
    print(
        f"\nload: {dict(statuses)} in {seconds:.0f} s ({dict(answered_after_release)} after the lock went), "
        f"{len(acknowledged)} acknowledged writes, all stored"
    )
