"""`make bench`'s floors (bench/ceiling.py) do the I/O of the endpoints they bound, on
real PostgreSQL and Redis, and the report's verdicts name them; each share is of the
ceiling read around its endpoint."""

from __future__ import annotations

import pytest
from sqlalchemy import text

import bench.ceiling as floors
from app.db import db
from bench.run import (
    CEILING,
    FLOOR_MISS,
    FLOOR_POST,
    ceiling_line,
    errors_cell,
    goal_lines,
    median_of,
    share_of_ceiling,
)
from tests.support.factories import FollowFactory, UserFactory

pytestmark = pytest.mark.no_transaction


@pytest.fixture
def floor_client(app, committed, test_db_url, monkeypatch):
    """The floors' app on the tests' database and Redis database, its per-thread
    connections closed after the test."""
    monkeypatch.setenv("DATABASE_URL", test_db_url.render_as_string(hide_password=False))
    monkeypatch.setenv("REDIS_URL", app.config["REDIS_URL"])
    yield floors.app.test_client()
    for name in ("database", "redis"):
        if (conn := floors._per_thread.__dict__.pop(name, None)) is not None:
            conn.close()


def test_the_post_floor_commits_the_apps_statements_and_drops_the_followers_keys(
    app, floor_client, redis_client, monkeypatch
):
    with app.app_context():
        author, follower = UserFactory(), UserFactory()
        FollowFactory(follower_id=follower.id, followed_id=author.id)
        db.session.commit()
        author_id, follower_id = author.id, follower.id
    monkeypatch.setattr(floors, "FLOOR_AUTHOR", author_id)
    redis_client.set(f"floor:feed:{follower_id}", b"page")
    redis_client.set(f"floor:user:{author_id}", b"profile")

    response = floor_client.post("/floor/posts", json={"title": "Floor", "body": "Its I/O alone."})

    assert response.status_code == 201
    post = response.get_json()
    assert (post["title"], post["body"], post["version"]) == ("Floor", "Its I/O alone.", 1)
    assert post["author"]["id"] == author_id
    with app.app_context():  # committed, and counted, as the app's own post is
        stored = db.session.execute(
            text("SELECT p.title, u.post_count FROM posts p JOIN users u ON u.id = p.author_id WHERE p.id = :id"),
            {"id": post["id"]},
        ).one()
        db.session.rollback()
    assert tuple(stored) == ("Floor", 1)
    assert redis_client.exists(f"floor:feed:{follower_id}", f"floor:user:{author_id}") == 0


def test_the_miss_floor_reads_the_row_and_fills_a_key_it_never_reads(app, floor_client, redis_client):
    with app.app_context():
        user = UserFactory(bio="On the floor.")
        db.session.commit()
        user_id, username = user.id, user.username

    first = floor_client.get(f"/floor/users/{user_id}")
    with app.app_context():
        db.session.execute(text("UPDATE users SET bio = 'Moved.' WHERE id = :id"), {"id": user_id})
        db.session.commit()
    second = floor_client.get(f"/floor/users/{user_id}")

    assert first.status_code == second.status_code == 200
    profile = first.get_json()
    assert (profile["id"], profile["username"], profile["bio"], profile["post_count"]) == (
        user_id,
        username,
        "On the floor.",
        0,
    )
    assert second.get_json()["bio"] == "Moved."  # a miss again: the row read again
    assert redis_client.get(f"floor:user:{user_id}") == second.data


def _row(name: str, share: float) -> dict:
    return {"name": name, "vs_ceiling": share, "rps": share * 1000, "p95": 10_000}


def test_the_verdict_on_a_bounded_goal_gives_its_floor():
    results = [
        _row(CEILING, 1.0),
        _row(FLOOR_MISS, 0.31),
        _row(FLOOR_POST, 0.16),
        _row("GET /users/{id} (uncached)", 0.17),
        _row("POST /posts", 0.09),
        _row("PATCH /posts/{id}", 0.08),
    ]

    lines = goal_lines(results)

    assert (
        "- GET /users/{id} (uncached) at least 35% of the ceiling: NO (17%; its I/O alone with raw drivers: 31%)"
        in lines
    )
    assert "- POST /posts at least 25% of the ceiling: NO (9%; its I/O alone with raw drivers: 16%)" in lines
    assert "- PATCH /posts/{id} at least 20% of the ceiling: NO (8%)" in lines  # no floor of its own


def test_a_share_is_of_the_ceiling_read_just_before_and_just_after_its_endpoint():
    # the machine slowed down while the endpoint ran: the ceiling went from 4,000 to 2,000
    assert share_of_ceiling(900, ceiling_before=4000, ceiling_after=2000) == pytest.approx(0.30)
    assert share_of_ceiling(900, ceiling_before=3000, ceiling_after=3000) == pytest.approx(0.30)
    assert share_of_ceiling(900, ceiling_before=1500, ceiling_after=4500) == pytest.approx(0.30)


def test_the_report_says_how_the_ceiling_was_read():
    line = ceiling_line([2345.6, 5432.1, 4000.0])
    assert "3 readings" in line and "2,346-5,432 req/s" in line
    assert "once a round" in ceiling_line([])


def _round(**errors) -> dict:
    kinds = {kind: errors.get(kind, 0) for kind in ("connect", "read", "write", "timeout", "4xx/5xx")}
    socket = sum(count for kind, count in kinds.items() if kind != "4xx/5xx")
    figures = {"rps": 100.0, "answered_rps": 100.0, "vs_ceiling": 0.1, "p50": 1, "p95": 2, "p99": 3}
    figures |= {"requests": 1000, "cpu_us": None}
    return {**figures, "socket_errors": socket, "status_errors": kinds["4xx/5xx"], "error_kinds": kinds}


def test_the_report_says_what_the_errors_of_the_rounds_were():
    row = median_of([_round(timeout=1), _round(), _round(**{"4xx/5xx": 2, "timeout": 1})])
    assert errors_cell(row) == "4 (timeout 2, 4xx/5xx 2)"
    assert errors_cell(median_of([_round(), _round()])) == "0"


def test_logins_a_second_count_the_answered_ones_and_the_shed_ones_are_errors():
    # 50 logins a second, of which 15 shed with a 503 (Retry-After): 35 answered
    flood = {**_round(**{"4xx/5xx": 150}), "name": "POST /auth/login", "rps": 50.0, "answered_rps": 35.0}

    lines = goal_lines([_row(CEILING, 1.0), flood])

    assert "- at least 40 logins a second: NO (35/s, errors 150 (4xx/5xx 150))" in lines
