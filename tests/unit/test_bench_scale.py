"""The generator of `make bench-scale`'s data set, at a tiny scale (its skew and counters), and its verdicts."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from app.db import db
from bench.scale import (
    CELEBRITIES,
    COMMON_WORD,
    MIDDLING_WORD,
    RARE_WORD,
    generate,
    plans,
    sizes,
    verdict,
    word_counts,
)

FACTOR = 0.005  # 500 users, 10,000 posts, 10,000 follows


def test_the_generated_graph_is_skewed_and_its_counters_match_the_rows():
    conn = db.session.connection()
    n = generate(conn, FACTOR, "!")
    assert n == sizes(FACTOR)

    def one(sql: str, **params):
        return conn.execute(text(sql), params).scalar()

    assert one("SELECT count(*) FROM users") == n["users"] == 500
    assert one("SELECT count(*) FROM posts") == n["posts"] == 10_000
    assert one("SELECT count(*) FROM follows") == n["follows"] == 10_000
    # every celebrity is followed by half of everyone, and by no more
    followers = conn.execute(
        text("SELECT followed_id, count(*) FROM follows WHERE followed_id <= :c GROUP BY 1 ORDER BY 1"),
        {"c": CELEBRITIES},
    ).all()
    assert followers == [(c, n["users"] // 2) for c in range(1, CELEBRITIES + 1)]
    # besides the celebrities they may follow, the heavy readers follow a twentieth of
    # everyone, the rest about ten accounts each
    following = dict(
        conn.execute(
            text("SELECT follower_id, count(*) FROM follows WHERE followed_id > :c GROUP BY 1"), {"c": CELEBRITIES}
        ).all()
    )
    heavy = range(CELEBRITIES + 1, CELEBRITIES + n["heavy_readers"] + 1)
    assert {following.get(u) for u in heavy} == {n["heavy_follows"]}
    small = [following.get(u, 0) for u in range(CELEBRITIES + n["heavy_readers"] + 1, n["users"] + 1)]
    assert sum(small) == n["rest_follows"] and max(small) - min(small) <= 1
    assert max(small) < n["heavy_follows"]
    assert one("SELECT count(*) FROM follows WHERE follower_id = followed_id") == 0
    # the stored counters are the rows'
    assert (
        one("""
        SELECT count(*) FROM users u WHERE
            post_count <> (SELECT count(*) FROM posts WHERE author_id = u.id)
         OR follower_count <> (SELECT count(*) FROM follows WHERE followed_id = u.id)
         OR following_count <> (SELECT count(*) FROM follows WHERE follower_id = u.id)
    """)
        == 0
    )
    assert one("SELECT count(DISTINCT password_hash) FROM users") == 1
    # posts were written over a year in id order, and the table's pages hold them in it
    assert one("SELECT count(*) FROM posts p JOIN posts q ON q.id = p.id + 1 WHERE q.created_at <= p.created_at") == 0
    assert 364 < one("SELECT extract(epoch FROM max(created_at) - min(created_at)) / 86400 FROM posts") <= 365
    conn.execute(text("ANALYZE posts"))
    assert one("SELECT correlation FROM pg_stats WHERE tablename = 'posts' AND attname = 'created_at'") > 0.99
    # the search words: rare, middling, common, found through the search vector
    counts = {
        word: one("SELECT count(*) FROM posts WHERE search @@ to_tsquery('english', :w)", w=word)
        for word in (RARE_WORD, MIDDLING_WORD, COMMON_WORD)
    }
    assert counts == word_counts(n["posts"])
    assert counts[RARE_WORD] >= 1 and counts[RARE_WORD] / n["posts"] <= 0.0001
    assert 0.009 < counts[MIDDLING_WORD] / n["posts"] < 0.011
    assert counts[COMMON_WORD] / n["posts"] > 0.5
    # beside the few common words, a long tail of words (the planner's statistics see it)
    assert one("SELECT count(*) FROM ts_stat('SELECT search FROM posts')") > 5000
    # the indexes and foreign keys are back, and new rows get new ids
    indexes = set(conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'posts'")).scalars())
    assert {
        "ix_posts_created_with_author",
        "ix_posts_author_created",
        "ix_posts_search",
        "uq_posts_author_external",
    } <= indexes
    assert one("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'follows'::regclass") == 2
    assert one("INSERT INTO posts (author_id, title, body) VALUES (1, 't', 'b') RETURNING id") == n["posts"] + 1


def test_a_held_miss_is_a_miss_on_every_read_until_released(app, client):
    """The cold reads of both benches hold tombstones on every id: each read queries and
    its fill is refused, however often the id comes up; released, the next read fills."""
    from app import cache
    from bench.run import hold_misses
    from tests.support.factories import PostFactory

    post = PostFactory()
    redis_client = app.extensions["cache_redis"]
    url = app.config["CACHE_REDIS_URL"]
    hold_misses(url, cache.post_key(""), post.id)
    for _ in range(3):
        assert client.get(f"/api/v1/posts/{post.id}").status_code == 200
        assert redis_client.get(cache.post_key(post.id)) is None
    hold_misses(url, cache.post_key(""), post.id, release=True)
    assert client.get(f"/api/v1/posts/{post.id}").status_code == 200
    assert redis_client.get(cache.post_key(post.id)) is not None


def test_the_verdicts_ask_the_ratio_and_the_p95_of_each_goal():
    """A read and a search keep 67 % of the small set's rate and their p95 bar; a
    celebrity's post keeps 75 % of a small account's rate and at most 125 % of its p95."""
    small = {"rps": 1000, "p95": 10_000, "status_errors": 0}

    def run(rps: float, p95_ms: float) -> dict:
        return {"rps": rps, "p95": p95_ms * 1000, "status_errors": 0}

    assert verdict("GET /posts (page 50)", small, run(670, 49), {}) == "yes"
    assert verdict("GET /posts (page 50)", small, run(660, 49), {}).startswith("NO")
    assert verdict("GET /posts (page 50)", small, run(900, 51), {}).startswith("NO")
    assert verdict("search, common word (lantern)", small, run(670, 99), {}).startswith("yes")
    assert verdict("search, common word (lantern)", small, run(630, 60), {}).startswith("NO")
    assert verdict("search, common word (lantern)", small, run(900, 101), {}).startswith("NO")
    anyone = {"POST /posts, small account": run(800, 80)}
    assert verdict("POST /posts, celebrity", small, run(600, 100), anyone).startswith("yes")
    assert verdict("POST /posts, celebrity", small, run(590, 80), anyone).startswith("NO")
    assert verdict("POST /posts, celebrity", small, run(800, 101), anyone).startswith("NO")


@pytest.mark.no_transaction  # plans() sends its requests and EXPLAINs on connections of its own
def test_the_plans_show_a_search_under_its_settings_and_the_edit_of_the_post_written_before(app, committed):
    """A search goes as its settings and its statement in one message: its plan is the
    statement's, planned under those settings. The edit edits the post the POST before it
    wrote (the run's own posts are gone by the time the plans are taken)."""
    from bench.run import BENCH_POST_TITLE
    from tests.support.factories import PostFactory, UserFactory
    from tests.support.sessions import open_session

    with app.app_context():
        author = UserFactory()
        PostFactory(author=UserFactory(), body="A zephyr came through.")  # not the author's to edit
        token = open_session(author)["access_token"]
    requests = [
        {"name": "search", "path": "/api/v1/posts?limit=20&q=zephyr"},
        {"name": "post", "method": "POST", "path": "/api/v1/posts", "token": token, "records_posts": True,
         "body": json.dumps({"title": BENCH_POST_TITLE, "body": "Written for the plan."})},
        {"name": "edit", "method": "PATCH", "path": "/api/v1/posts/{id}", "token": token, "edits_posts": True,
         "body": json.dumps({"body": "Edited for the plan."})},
    ]  # fmt: skip
    found = plans(app, requests)
    search = [p for p in found if p["scenario"] == "search" and "websearch_to_tsquery" in p["statement"]]
    assert len(search) == 1 and search[0]["status"] == 200
    assert search[0]["statement"].lstrip().upper().startswith(("SELECT", "WITH"))
    assert "Execution Time" in search[0]["plan"]
    edits = [p for p in found if p["scenario"] == "edit"]
    assert edits and {p["status"] for p in edits} == {200}
    assert any(p["statement"].lstrip().upper().startswith("UPDATE POSTS") for p in edits)
