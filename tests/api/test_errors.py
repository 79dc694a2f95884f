"""Every failure leaves as problem+json; request ids; probes; backing services down."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app.db import select_rows
from app.factory import create_app

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "request_id"}


@pytest.fixture
def failing_app(app, test_db_url):
    """An app with routes that fail the ways production can."""
    broken = create_app(
        {
            "APP_ENV": "test",
            "SQLALCHEMY_DATABASE_URI": str(test_db_url.render_as_string(False)),
            "REDIS_URL": app.config["REDIS_URL"],
        }
    )

    @broken.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    @broken.get("/db-down")
    def db_down():
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    @broken.get("/pool-exhausted")
    def pool_exhausted():
        raise PoolTimeoutError("QueuePool limit reached")

    @broken.get("/too-slow")
    def too_slow():
        select_rows(select(func.pg_sleep(2)), {}, timeout_ms=50)

    return broken


def test_unknown_route_is_404_problem(client):
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert set(response.get_json()) >= PROBLEM_KEYS
    assert response.get_json()["instance"] == "/api/v1/nothing-here"


def test_wrong_method_is_405_with_allow(client):
    response = client.delete("/api/v1/users")
    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert "GET" in response.headers["Allow"]


def test_unexpected_exception_is_500_problem_without_internals(failing_app):
    response = failing_app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.mimetype == "application/problem+json"
    assert "secret internals" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/db-down", "/pool-exhausted"])
def test_database_trouble_is_503_with_retry_after(failing_app, path):
    response = failing_app.test_client().get(path)
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert int(response.headers["Retry-After"]) > 0


def test_a_statement_stopped_by_its_timeout_is_503_not_database_down(failing_app):
    response = failing_app.test_client().get("/too-slow")
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["detail"].startswith("The request took too long in the database")
    assert int(response.headers["Retry-After"]) > 0


def test_request_id_is_echoed_or_made(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id\twith junk"}).headers["X-Request-ID"]
    assert re.fullmatch("[0-9a-f]{32}", made)  # a new one, not the junk sent
    problem = client.get("/nope", headers={"X-Request-ID": "trace-1"}).get_json()
    assert problem["request_id"] == "trace-1"


def test_healthz_and_readyz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"database": "ok", "redis": "ok"}


@pytest.mark.no_transaction  # its own app, its own engine
def test_readyz_is_503_when_redis_is_unreachable_and_healthz_stays_up(app, test_db_url):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    cut_off = create_app(
        {
            "APP_ENV": "test",
            "SQLALCHEMY_DATABASE_URI": test_db_url.render_as_string(False),
            "REDIS_URL": f"redis://127.0.0.1:{dead}/0",
        }
    )
    client = cut_off.test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"] == {"database": "ok", "redis": "unavailable"}
    assert "Retry-After" in response.headers
    assert client.get("/healthz").status_code == 200


@pytest.mark.no_transaction
def test_readyz_is_503_when_postgres_is_unreachable(app):
    cut_off = create_app(
        {
            "APP_ENV": "test",
            "REDIS_URL": app.config["REDIS_URL"],
            "SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://nobody@127.0.0.1:1/none",
        }
    )
    response = cut_off.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] == "unavailable"


def test_openapi_document_lists_every_endpoint_and_problem_responses(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    expected = {
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/users",
        "/api/v1/users/me",
        "/api/v1/users/{user_id}",
        "/api/v1/users/{user_id}/posts",
        "/api/v1/users/{user_id}/follow",
        "/api/v1/users/{user_id}/followers",
        "/api/v1/users/{user_id}/following",
        "/api/v1/posts",
        "/api/v1/posts/{post_id}",
        "/api/v1/feed",
        "/healthz",
        "/readyz",
    }
    assert expected <= set(spec["paths"])
    assert "application/problem+json" in spec["components"]["responses"]["NOT_FOUND"]["content"]
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "401" in spec["paths"]["/api/v1/feed"]["get"]["responses"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("get", "/api/v1/users/99999999999999999999999", None),
        ("get", "/api/v1/posts/9223372036854775808", None),
        ("get", "/api/v1/users/0", None),
        ("get", "/api/v1/posts/-1", None),
    ],
)
def test_ids_beyond_bigint_are_404_not_500(client, method, url, body):
    assert getattr(client, method)(url, json=body).status_code == 404


@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        ("/api/v1/auth/login", {"login": "a\x00b", "password": "x"}, "login"),
        ("/api/v1/auth/register", {"username": "abc", "email": "a@example.com", "password": "p\x00" * 6}, "password"),
    ],
)
def test_nul_characters_are_422_naming_the_field(client, url, body, field):
    response = client.post(url, json=body)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]


def test_nul_in_a_query_string_is_422(client):
    response = client.get("/api/v1/posts", query_string={"q": "a\x00b"})
    assert response.status_code == 422
    assert "q" in response.get_json()["errors"]


def test_cursor_with_an_id_beyond_bigint_is_422(client):
    from app.pagination import encode_cursor

    response = client.get("/api/v1/posts", query_string={"cursor": encode_cursor(["2026-01-01T00:00:00", 2**70])})
    assert response.status_code == 422


def test_path_ids_are_documented_as_bounded_integers(client):
    spec = client.get("/openapi.json").get_json()
    (param,) = [p for p in spec["paths"]["/api/v1/posts/{post_id}"]["parameters"] if p["name"] == "post_id"]
    assert param["schema"] == {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
