"""Authors with FEED_PULL_THRESHOLD followers or more: a change to their posts moves
their mark instead of dropping each follower's cached feed page, and a page holding an
old mark is read as a miss."""

from __future__ import annotations

import json

import pytest
from redis.exceptions import RedisError

from app import cache, queue
from app.pagination import KeysetQuery
from app.posts import service as posts
from tests.support.factories import FollowFactory, PostFactory, UserFactory

POSTS = "/api/v1/posts"
FEED = "/api/v1/feed"


@pytest.fixture
def pulled_over_one(app, monkeypatch):
    """Anyone with a follower is pulled."""
    monkeypatch.setitem(app.config, "FEED_PULL_THRESHOLD", 1)


def _queued_drops(redis_client) -> list[list]:
    """The arguments of each feed drop queued since the last call (the queue is emptied)."""
    messages = [json.loads(message) for message in redis_client.lrange(queue.SHORT, 0, -1)]
    redis_client.delete(queue.SHORT)
    return [m["headers"]["argsrepr"] for m in messages if m["headers"]["task"] == queue.DROP_FOLLOWER_FEEDS]


def _reader(client, login):
    def feed_ids(user) -> list[int]:
        response = client.get(FEED, headers=login(user))
        assert response.status_code == 200, response.get_json()
        return [item["id"] for item in response.get_json()["items"]]

    return feed_ids


def _post(client, headers) -> int:
    response = client.post(POSTS, json={"title": "t", "body": "b"}, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def test_a_pulled_authors_post_moves_its_mark_and_drops_no_follower_page(client, login, redis_client, pulled_over_one):
    star, fan, bystander, other = UserFactory(), UserFactory(), UserFactory(), UserFactory()
    older = PostFactory(author=other)
    FollowFactory(follower_id=fan.id, followed_id=star.id)
    for reader in (fan, bystander):
        FollowFactory(follower_id=reader.id, followed_id=other.id)
    star_headers = login(star)
    feed_ids = _reader(client, login)
    assert feed_ids(fan) == [older.id] and feed_ids(bystander) == [older.id]  # cached now

    # the star's first change as a pulled author: pages cached before hold no mark of
    # theirs, so each follower's is dropped once, by a worker
    first = _post(client, star_headers)
    assert _queued_drops(redis_client) == [f"[{star.id}]"]
    assert redis_client.exists(cache.feed_key(fan.id))  # not by the request
    assert posts.drop_follower_feeds(star.id) == 1  # the worker's part
    assert not redis_client.exists(cache.feed_key(fan.id))
    assert feed_ids(fan) == [first, older.id]
    marks, _ = cache.from_feed_entry(redis_client.get(cache.feed_key(fan.id)))
    assert list(marks) == [star.id]

    # from now on: no drop, queued or done; the page the fan has cached is stale by its mark
    second = _post(client, star_headers)
    assert _queued_drops(redis_client) == []
    assert redis_client.exists(cache.feed_key(fan.id))
    before = cache.stats()
    assert cache.feed_page(cache.feed_key(fan.id)) is None  # stale: a miss, counted as one
    after = cache.stats()
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (0, 1)
    assert feed_ids(fan) == [second, first, older.id]
    assert cache.from_feed_entry(redis_client.get(cache.feed_key(fan.id)))[0][star.id] != marks[star.id]

    # a reader who follows no pulled author holds no mark and keeps their page
    bystander_entry = redis_client.get(cache.feed_key(bystander.id))
    assert cache.from_feed_entry(bystander_entry)[0] == {}
    assert feed_ids(bystander) == [older.id]
    assert redis_client.get(cache.feed_key(bystander.id)) == bystander_entry


def test_a_page_whose_query_missed_a_pulled_authors_post_is_not_read_again(
    client, login, redis_client, pulled_over_one, monkeypatch
):
    """The marks are noted before the page's query: a post committed after the query
    (here, made while the reader fills the page) moves a mark the page already holds,
    so the next read queries again."""
    star, fan = UserFactory(), UserFactory()
    FollowFactory(follower_id=fan.id, followed_id=star.id)
    older = PostFactory(author=star)
    posts._posts_changed(star.id, None)  # the star is a pulled author already
    feed_ids = _reader(client, login)
    made = []
    fill = KeysetQuery.first_entry

    def fill_then_post(self, params):
        entry = fill(self, params)
        if not made:  # the post commits once the query has run
            made.append(PostFactory(author=star).id)
            posts._posts_changed(star.id, None)
        return entry

    monkeypatch.setattr(KeysetQuery, "first_entry", fill_then_post)
    assert feed_ids(fan) == [older.id]  # the query's page
    assert redis_client.exists(cache.feed_key(fan.id))
    assert feed_ids(fan) == [made[0], older.id]


def test_a_pulled_authors_mark_moves_for_every_process_with_local_copies(
    app, client, login, redis_client, pulled_over_one, local_copies_on
):
    star, fan = UserFactory(), UserFactory()
    FollowFactory(follower_id=fan.id, followed_id=star.id)
    posts._posts_changed(star.id, None)
    feed_ids = _reader(client, login)
    assert feed_ids(fan) == []
    assert feed_ids(fan) == []  # the page and the star's mark are copies in this process now
    new = _post(client, login(star))
    assert feed_ids(fan) == [new]


def test_when_redis_refuses_the_mark_every_followers_page_is_dropped_by_a_worker(
    app, client, login, redis_client, pulled_over_one, monkeypatch
):
    star, fan = UserFactory(), UserFactory()
    FollowFactory(follower_id=fan.id, followed_id=star.id)
    posts._posts_changed(star.id, None)
    _queued_drops(redis_client)
    original = cache._script

    def refusing(source):
        if source == cache._PULLED_AUTHOR_CHANGED:
            raise RedisError("refused")
        return original(source)

    monkeypatch.setattr(cache, "_script", refusing)
    _post(client, login(star))
    assert _queued_drops(redis_client) == [f"[{star.id}]"]


def test_with_read_replicas_no_feed_page_is_cached_while_a_followed_pulled_mark_is_new(
    app, client, login, redis_client, pulled_over_one, monkeypatch
):
    """A replica may not have replayed the change that moved a mark the reader noted:
    with replicas set, a page holding a mark moved in the last seconds is not cached
    (as a first page is not while its own tombstone stands); a reader who follows no
    pulled author is cached as before."""
    from app.db import READ_ENGINE_CHOOSER

    star, fan, bystander = UserFactory(), UserFactory(), UserFactory()
    FollowFactory(follower_id=fan.id, followed_id=star.id)
    posts._posts_changed(star.id, None)  # pulled, its mark just moved
    monkeypatch.setitem(app.extensions, READ_ENGINE_CHOOSER, lambda primary: primary)
    feed_ids = _reader(client, login)
    assert feed_ids(fan) == [] and feed_ids(bystander) == []
    assert not redis_client.exists(cache.feed_key(fan.id))
    assert redis_client.exists(cache.feed_key(bystander.id))
    redis_client.delete(cache.tombstone_key(cache.feed_mark_key(star.id)))  # seconds later
    assert feed_ids(fan) == []
    assert redis_client.exists(cache.feed_key(fan.id))
