"""Metrics, JSON request logs with request ids carried into tasks, and the pool."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event, text
from werkzeug.serving import make_server

from app import queue
from app.db import db
from app.factory import create_app
from app.logs import configure_logging
from tests.support.factories import PostFactory, UserFactory
from tests.support.sessions import open_session


def test_metrics_are_off_without_a_token_and_need_it_when_on(app, client, monkeypatch):
    assert client.get("/metrics").status_code == 404
    monkeypatch.setitem(app.config, "METRICS_TOKEN", "s3cret-metrics-token")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    PostFactory()
    client.get("/api/v1/posts")
    client.get("/api/v1/users/1")
    response = client.get("/metrics", headers={"Authorization": "Bearer s3cret-metrics-token"})
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert 'http_requests_total{method="GET",route="/api/v1/posts",status="200"}' in body
    assert 'http_request_duration_seconds_bucket{le="0.05",method="GET",route="/api/v1/posts"}' in body
    for name in (
        "db_pool_checked_out",
        "db_pool_size 10.0",
        "db_pool_timeouts_total",
        "cache_hits_total",
        "cache_misses_total",
        "jobs",
    ):
        assert name in body


def test_one_log_record_per_request_with_its_fields(client, caplog):
    user = UserFactory()
    headers = {"Authorization": f"Bearer {open_session(user)['access_token']}", "X-Request-ID": "req-42"}
    with caplog.at_level(logging.INFO, logger="app.request"):
        client.get("/api/v1/users/me", headers=headers)
    (record,) = [r for r in caplog.records if r.name == "app.request"]
    assert (record.method, record.route, record.status, record.request_id) == ("GET", "/api/v1/users/me", 200, "req-42")
    assert record.user_id == str(user.id)
    assert record.duration_ms > 0


def test_json_log_lines(capsys):
    configure_logging("INFO", "json")
    try:
        logging.getLogger("app.request").info("request", extra={"status": 201, "route": "/x"})
        line = capsys.readouterr().out.strip().splitlines()[-1]
    finally:
        configure_logging("INFO", "text")
    entry = json.loads(line)
    assert entry["message"] == "request" and entry["level"] == "INFO" and entry["status"] == 201
    assert "time" in entry and "request_id" in entry


def test_a_request_s_id_goes_with_the_tasks_it_queues(client, redis_client, login):
    user = UserFactory()
    client.patch(
        "/api/v1/users/me", json={"display_name": "Renamed"}, headers={**login(user), "X-Request-ID": "trace-me-7"}
    )
    messages = [json.loads(m) for m in redis_client.lrange(queue.SHORT, 0, -1)]
    assert messages and all(m["headers"]["request_id"] == "trace-me-7" for m in messages)


def test_pool_status_command(app):
    output = app.test_cli_runner().invoke(args=["db", "pool-status"]).output
    assert "keeps up to 10 connections, opens up to 10 more" in output
    assert "this process: 1 connection(s) open: 1 in use, 0 idle" in output  # not "Current Overflow: -9"
    assert "Overflow" not in output
    header, *rows = output.split("by application")[1].splitlines()[1:]
    assert header.split() == ["APPLICATION", "STATE", "CONNECTIONS"] and rows


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.no_transaction
def test_an_exhausted_pool_answers_503_in_time_and_recovers(app, test_db_url):
    """Pool of 2, no overflow, 50 concurrent requests that each hold a connection."""
    timeout = 1
    small = create_app(
        {
            "APP_ENV": "test",
            "REDIS_URL": app.config["REDIS_URL"],
            "SQLALCHEMY_DATABASE_URI": test_db_url.render_as_string(False),
            "SQLALCHEMY_ENGINE_OPTIONS": {
                **app.config["SQLALCHEMY_ENGINE_OPTIONS"],
                "pool_size": 2,
                "max_overflow": 0,
                "pool_timeout": timeout,
            },
        }
    )

    @small.get("/hold")
    def hold():
        db.session.execute(text("SELECT pg_sleep(0.3)"))
        return {"held": True}

    port = _free_port()
    server = make_server("127.0.0.1", port, small, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def call(path: str) -> tuple[int, float, dict]:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                return response.status, time.monotonic() - started, dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, time.monotonic() - started, dict(error.headers)

    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(lambda _: call("/hold"), range(50)))
        statuses = [status for status, _, _ in results]
        assert set(statuses) <= {200, 503}
        assert statuses.count(200) >= 2 and statuses.count(503) >= 1
        assert max(elapsed for _, elapsed, _ in results) < timeout + 1
        assert all(int(h["Retry-After"]) > 0 for status, _, h in results if status == 503)
        assert call("/hold")[0] == 200  # and afterwards it serves normally
        assert call("/readyz")[0] == 200
    finally:
        server.shutdown()
        with small.app_context():
            db.engine.dispose()


@pytest.mark.no_transaction  # its own app, its own pool
def test_a_connection_the_server_ended_is_replaced_when_taken_from_the_pool(app, test_db_url):
    """As after a PostgreSQL restart: the idle pooled connections were ended server-side.
    Taking one from the pool notices it without a ping, and the query succeeds."""
    pooled = create_app(
        {
            "APP_ENV": "test",
            "REDIS_URL": app.config["REDIS_URL"],
            "SQLALCHEMY_DATABASE_URI": test_db_url.render_as_string(False),
        }
    )
    assert pooled.config["SQLALCHEMY_ENGINE_OPTIONS"]["pool_pre_ping"] is False
    backend = text("SELECT pg_backend_pid()")
    with pooled.app_context():
        try:
            with db.engine.connect() as conn:
                ended = conn.scalar(backend)
            with app.app_context(), db.engine.connect() as admin:
                assert admin.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": ended})
            time.sleep(0.2)  # the FATAL notice and the close reach the client socket
            statements = []
            event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
            with db.engine.connect() as conn:
                assert conn.scalar(backend) != ended  # a new connection, no error
            assert statements == ["SELECT pg_backend_pid()"]  # and no ping before it
        finally:
            db.engine.dispose()


@pytest.mark.no_transaction
def test_metrics_still_answer_when_postgres_is_down(app):
    cut_off = create_app(
        {
            "APP_ENV": "test",
            "REDIS_URL": app.config["REDIS_URL"],
            "METRICS_TOKEN": "t0ken",
            "SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://nobody@127.0.0.1:1/none",
        }
    )
    client = cut_off.test_client()
    assert client.get("/api/v1/posts").status_code == 503
    response = client.get("/metrics", headers={"Authorization": "Bearer t0ken"})
    assert response.status_code == 200
    assert 'route="/api/v1/posts",status="503"' in response.get_data(as_text=True)
