"""Keyset pagination: every row once, in order, even while rows are being added."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cachetools import LRUCache

from app.errors import ValidationFailed
from app.pagination import decode_cursor, encode_cursor
from tests.support.factories import FollowFactory, PostFactory, UserFactory

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def walk(client, url, headers=None, limit=7, between_pages=None):
    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        response = client.get(url, query_string=query, headers=headers or {})
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert len(body["items"]) <= limit
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, pages
        if between_pages:
            between_pages()


def test_posts_pages_miss_and_repeat_nothing_while_posts_are_added(client):
    author = UserFactory()
    # several posts share a timestamp: the id breaks the tie
    existing = [PostFactory(author=author, created_at=T0 + timedelta(minutes=i // 3)) for i in range(40)]
    expected = [p.id for p in sorted(existing, key=lambda p: (p.created_at, p.id), reverse=True)]
    seen, pages = walk(client, "/api/v1/posts", between_pages=lambda: PostFactory(author=author))
    assert seen == expected
    assert pages == 6


@pytest.fixture(params=["merged", "walked", "walked until the walk runs out"])
def feed_way(request, app, monkeypatch):
    """Each way the feed query finds a page (posts.service._feed_query): the readers of
    these tests follow few accounts, so a walk is asked for by a threshold of 0; a walk
    of 6 posts runs out on most pages, which are then merged."""
    walk_min, walk_scan = {"merged": (10**9, 10_000), "walked": (0, 10_000)}.get(request.param, (0, 6))
    monkeypatch.setitem(app.config, "FEED_WALK_MIN_FOLLOWING", walk_min)
    monkeypatch.setitem(app.config, "FEED_WALK_SCAN", walk_scan)
    return request.param


def test_feed_and_user_posts_pages(client, login, feed_way):
    me, author = UserFactory(), UserFactory()
    FollowFactory(follower_id=me.id, followed_id=author.id)
    posts = [PostFactory(author=author, created_at=T0 + timedelta(seconds=i)) for i in range(15)]
    expected = [p.id for p in reversed(posts)]
    assert walk(client, "/api/v1/feed", headers=login(me), limit=4)[0] == expected
    assert walk(client, f"/api/v1/users/{author.id}/posts", limit=4)[0] == expected


def test_feed_pages_merge_many_authors_and_leave_out_inactive_ones(client, login, feed_way):
    """The feed reads each author's newest posts separately and merges them, or walks
    everyone's newest posts: the pages must still interleave the authors exactly (ties
    broken by id), skip nothing when an author has more posts than a page, and leave out
    a deactivated author's posts and those of accounts the reader does not follow."""
    me = UserFactory()
    authors = UserFactory.create_batch(3)
    gone, stranger = UserFactory(is_active=False), UserFactory()
    for author in [*authors, gone]:
        FollowFactory(follower_id=me.id, followed_id=author.id)
    posts = [PostFactory(author=authors[i % 3], created_at=T0 + timedelta(minutes=i // 4)) for i in range(30)] + [
        PostFactory(author=authors[0], created_at=T0 + timedelta(minutes=100 + i)) for i in range(9)
    ]
    PostFactory(author=gone, created_at=T0 + timedelta(minutes=5))
    for i in range(12):  # among the followed authors' posts
        PostFactory(author=stranger, created_at=T0 + timedelta(minutes=3 * i, seconds=30))
        PostFactory(author=gone, created_at=T0 + timedelta(minutes=3 * i, seconds=45))
    expected = [p.id for p in sorted(posts, key=lambda p: (p.created_at, p.id), reverse=True)]
    seen, pages = walk(
        client, "/api/v1/feed", headers=login(me), limit=4, between_pages=lambda: PostFactory(author=authors[1])
    )
    assert seen == expected
    assert pages == 10


def test_users_pages_in_id_order_with_new_users_arriving(client):
    existing = [u.id for u in UserFactory.create_batch(20)]
    seen, _ = walk(client, "/api/v1/users", between_pages=UserFactory)
    assert seen[: len(existing)] == existing
    assert len(seen) == len(set(seen))


def test_followers_pages(client, login):
    star = UserFactory()
    fans = UserFactory.create_batch(12)
    for i, fan in enumerate(fans):
        FollowFactory(follower_id=fan.id, followed_id=star.id, created_at=T0 + timedelta(seconds=i // 2))
    seen, _ = walk(
        client, f"/api/v1/users/{star.id}/followers", limit=5, between_pages=lambda: FollowFactory(followed_id=star.id)
    )
    by_follow_time = sorted(range(len(fans)), key=lambda i: (i // 2, fans[i].id), reverse=True)
    assert seen == [fans[i].id for i in by_follow_time]
    assert len(seen) == len(set(seen)) == len(fans)


def test_default_and_maximum_page_size(client):
    PostFactory.create_batch(25)
    assert len(client.get("/api/v1/posts").get_json()["items"]) == 20
    assert len(client.get("/api/v1/posts?limit=100").get_json()["items"]) == 25
    assert client.get("/api/v1/posts?limit=101").status_code == 422


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "abc",
        encode_cursor(["2026-01-01T00:00:00+00:00"]),
        encode_cursor([1, 2]),
        encode_cursor(["not a date", 3]),
        encode_cursor(["2026-01-01T00:00:00+00:00", "3"]),
        encode_cursor(["2026-01-01T00:00:00+00:00", True]),
        "eyJ9",
        "x" * 513,
    ],
)
def test_a_forged_cursor_is_422_naming_cursor(client, cursor):
    response = client.get("/api/v1/posts", query_string={"cursor": cursor})
    assert response.status_code == 422
    assert "cursor" in response.get_json()["errors"]


def test_cursor_round_trip():
    stamp = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    assert decode_cursor(encode_cursor([stamp, 42]), [datetime, int]) == [stamp, 42]
    with pytest.raises(ValidationFailed):
        decode_cursor(encode_cursor({"a": 1}), [int])


def test_a_list_s_query_arguments_are_loaded_once_per_query_string_and_refused_every_time(app, client, monkeypatch):
    """StrictParser remembers PageArgsSchema loads (app/api.py): the same query string is
    loaded once, each request gets its own dict, and what was refused is refused again."""
    from app.api import ApiBlueprint, StrictParser
    from app.schemas import PageArgsSchema

    monkeypatch.setattr(ApiBlueprint.ARGUMENTS_PARSER, "_page_args", LRUCache(16))  # none from earlier tests
    loads = []
    load = PageArgsSchema.load
    monkeypatch.setattr(
        PageArgsSchema, "load", lambda self, data, **kw: loads.append(dict(data)) or load(self, data, **kw)
    )
    PostFactory.create_batch(3)
    for _ in range(3):
        assert len(client.get("/api/v1/posts?limit=2&author=999999").get_json()["items"]) == 0
        assert len(client.get("/api/v1/posts?limit=2").get_json()["items"]) == 2
        assert client.get("/api/v1/posts?limit=0").status_code == 422
    assert loads == [{"limit": "2", "author": "999999"}, {"limit": "2"}] + [{"limit": "0"}] * 3
    parser, schema = StrictParser(), PageArgsSchema()
    with app.test_request_context("/?limit=5"):
        first = parser.parse(schema, location="query")
        first["limit"] = 6
        assert parser.parse(schema, location="query") == {"limit": 5}
