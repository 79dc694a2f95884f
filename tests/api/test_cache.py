"""The profile and post cache: hits, read-your-writes, nothing private, Redis down."""

from __future__ import annotations

import io
import json
import time

import pytest

from app import cache
from app.db import READ_ENGINE_CHOOSER
from app.factory import create_app
from app.local_copies import LocalCopies
from app.redis_store import RedisStore
from tests.support.counting import redis_calls
from tests.support.factories import PUBLIC_PROFILE_FIELDS, AdminFactory, PostFactory, UserFactory
from tests.support.redis_server import RedisServer
from tests.support.sessions import open_session

USERS = "/api/v1/users"
POSTS = "/api/v1/posts"
FEED = "/api/v1/feed"


def test_profile_is_served_from_the_cache_without_sql(client, count_queries, redis_client):
    user = UserFactory()
    first = client.get(f"{USERS}/{user.id}")
    with count_queries() as queries:
        second = client.get(f"{USERS}/{user.id}")
    assert second.status_code == 200
    assert second.get_data() == first.get_data()
    assert queries.count == 0
    assert cache.stats() == {"hits": 1, "misses": 1, "hit_rate": 0.5}
    assert 0 < redis_client.ttl(cache.profile_key(user.id)) <= 300


def test_counts_reach_the_shared_counters_within_a_second(client, redis_client):
    """A process adds its hits and misses to Redis with its first cache read after a
    second has passed, so other processes (the CLI, a scrape of /metrics) see them then."""
    user = UserFactory()
    client.get(f"{USERS}/{user.id}")  # a miss, counted in this process for now
    assert redis_client.mget(cache.HITS, cache.MISSES) == [None, None]
    time.sleep(cache.TALLY_SECONDS + 0.1)
    client.get(f"{USERS}/{user.id}")  # a hit; a second has passed: both go to Redis
    assert redis_client.mget(cache.HITS, cache.MISSES) == [b"1", b"1"]


def test_cached_entries_hold_nothing_private(client, login, redis_client):
    post = PostFactory()
    client.get(f"{USERS}/{post.author_id}")
    client.get(f"{POSTS}/{post.id}")
    client.get(f"{USERS}/me", headers=login(UserFactory()))
    raw_profile = redis_client.get(cache.profile_key(post.author_id)).decode()
    raw_post = redis_client.get(cache.post_key(post.id)).decode()
    for raw in (raw_profile, raw_post):
        assert "@example.com" not in raw and "role" not in raw and "argon2" not in raw
    assert set(json.loads(raw_profile)) == PUBLIC_PROFILE_FIELDS
    keys = {k.decode() for k in redis_client.scan_iter("user:v1:*") if not k.startswith(b"tombstone:")}
    assert keys == {cache.profile_key(post.author_id)}  # /users/me was not cached


def test_profile_edit_is_read_back_at_once_on_any_web_process(app, client, login, test_db_url):
    user = UserFactory(display_name="Before")
    other_process = create_app(
        {
            "APP_ENV": "test",
            "SQLALCHEMY_DATABASE_URI": test_db_url.render_as_string(False),
            "REDIS_URL": app.config["REDIS_URL"],
        }
    ).test_client()
    client.get(f"{USERS}/{user.id}")  # cached in Redis
    for process in (client, other_process):  # and a copy kept by each process
        assert process.get(f"{USERS}/{user.id}").get_json()["display_name"] == "Before"
    assert client.patch(f"{USERS}/me", json={"display_name": "After"}, headers=login(user)).status_code == 200
    assert client.get(f"{USERS}/{user.id}").get_json()["display_name"] == "After"
    assert other_process.get(f"{USERS}/{user.id}").get_json()["display_name"] == "After"


def test_counts_in_a_cached_profile_stay_true(client, login):
    author, fan = UserFactory(), UserFactory()
    headers = login(author)
    assert client.get(f"{USERS}/{author.id}").get_json()["post_count"] == 0
    created = client.post(POSTS, json={"title": "t", "body": "b"}, headers=headers).get_json()
    assert client.get(f"{USERS}/{author.id}").get_json()["post_count"] == 1
    client.put(f"{USERS}/{author.id}/follow", headers=login(fan))
    assert client.get(f"{USERS}/{author.id}").get_json()["follower_count"] == 1
    assert client.get(f"{USERS}/{fan.id}").get_json()["following_count"] == 1
    client.delete(f"{USERS}/{author.id}/follow", headers=login(fan))
    assert client.get(f"{USERS}/{author.id}").get_json()["follower_count"] == 0
    client.delete(f"{POSTS}/{created['id']}", headers=headers)
    assert client.get(f"{USERS}/{author.id}").get_json()["post_count"] == 0


def test_cached_post_keeps_its_etag_and_edits_show_at_once(client, login):
    post = PostFactory(title="Old")
    from app.db import db
    from app.models import User

    headers = login(db.session.get(User, post.author_id))
    assert client.get(f"{POSTS}/{post.id}").headers["ETag"] == '"v1"'
    cached = client.get(f"{POSTS}/{post.id}")
    assert cached.headers["ETag"] == '"v1"' and cached.get_json()["title"] == "Old"
    client.patch(f"{POSTS}/{post.id}", json={"title": "New"}, headers=headers)
    fresh = client.get(f"{POSTS}/{post.id}")
    assert fresh.get_json()["title"] == "New" and fresh.headers["ETag"] == '"v2"'
    client.delete(f"{POSTS}/{post.id}", headers=headers)
    assert client.get(f"{POSTS}/{post.id}").status_code == 404


def test_users_with_posts_come_from_the_cache_as_the_schema_writes_them(client):
    """The list splices cached JSON (profile + newest posts): it must be exactly what
    UserListItemSchema would have written, cold and warm."""
    from app.db import db
    from app.models import User
    from app.users.schemas import PostBriefSchema, PublicUserSchema

    authors = UserFactory.create_batch(2)
    written = {author.id: PostFactory.create_batch(6, author=author) for author in authors}
    cold = client.get(f"{USERS}?include=posts").get_json()
    warm = client.get(f"{USERS}?include=posts").get_json()
    assert warm == cold
    for author in authors:
        newest = sorted(written[author.id], key=lambda p: (p.created_at, p.id), reverse=True)[:5]
        expected = {
            **PublicUserSchema().dump(db.session.get(User, author.id)),
            "posts": PostBriefSchema(many=True).dump(newest),
        }
        item = next(i for i in warm["items"] if i["id"] == author.id)
        assert item == expected and len(item["posts"]) == 5
        assert list(item) == list(expected)  # same key order too


def test_newest_posts_in_the_user_list_follow_every_write(client, login):
    from app.db import db
    from app.models import User

    post = PostFactory(title="First")
    author = db.session.get(User, post.author_id)
    headers = login(author)

    def listed():
        items = client.get(f"{USERS}?include=posts").get_json()["items"]
        return [(p["id"], p["title"]) for p in next(i for i in items if i["id"] == author.id)["posts"]]

    assert listed() == [(post.id, "First")]
    created = client.post(POSTS, json={"title": "Second", "body": "b"}, headers=headers).get_json()
    assert listed() == [(created["id"], "Second"), (post.id, "First")]
    client.patch(f"{POSTS}/{post.id}", json={"title": "Renamed"}, headers=headers)
    assert listed() == [(created["id"], "Second"), (post.id, "Renamed")]
    client.delete(f"{POSTS}/{created['id']}", headers=headers)
    assert listed() == [(post.id, "Renamed")]


def _walk(client, url: str, limit: int) -> list[int]:
    """Every id of a list, page after page of `limit`."""
    ids, cursor = [], None
    while True:
        page = client.get(f"{url}?limit={limit}" + (f"&cursor={cursor}" if cursor else "")).get_json()
        ids += [item["id"] for item in page["items"]]
        if not (cursor := page["next_cursor"]):
            return ids


def test_the_cached_first_page_serves_any_limit_and_its_cursors_lead_on(client, redis_client):
    posts = PostFactory.create_batch(7)
    newest = [p.id for p in sorted(posts, key=lambda p: (p.created_at, p.id), reverse=True)]
    assert _walk(client, POSTS, 3) == newest  # the first page came from SQL and was cached
    assert redis_client.exists(cache.newest_posts_key())
    for limit in (1, 3, 6, 7, 100):  # each first page from the one entry, then on by cursor
        assert _walk(client, POSTS, limit) == newest
    for limit, next_page in ((6, True), (7, False), (8, False)):  # a next page only past the last post
        assert (client.get(f"{POSTS}?limit={limit}").get_json()["next_cursor"] is not None) is next_page
    users = UserFactory.create_batch(4)
    cache.clear()  # the factories wrote past the services
    assert _walk(client, USERS, 3) == sorted({p.author_id for p in posts} | {u.id for u in users})
    assert _walk(client, USERS, 2) == _walk(client, USERS, 100)


def test_the_cached_lists_follow_every_write_at_once(client, login, redis_client):
    """The first pages of /posts and /users come from the cache: each write that changes
    them drops the entry (a post created, deleted or imported; a user registered,
    deactivated or reactivated). Pages of 2, so a stale entry shows as a short page."""
    from app.jobs import service as jobs

    author = UserFactory()
    older = PostFactory.create_batch(2)  # by two other authors
    admin_headers = login(AdminFactory())
    headers = login(author)

    def cached_ids(url: str, key: str) -> list[int]:
        """The list as read back from its cache entry, put there by the first read after the
        last write (its tombstone still there)."""
        client.get(url)
        assert redis_client.exists(key)
        return [item["id"] for item in client.get(url).get_json()["items"]]

    def newest_posts():
        return cached_ids(f"{POSTS}?limit=2", cache.newest_posts_key())

    def first_users(limit: int = 2):
        return cached_ids(f"{USERS}?limit={limit}", cache.users_key())

    cache.clear()  # the factories wrote past the services
    assert newest_posts() == [older[1].id, older[0].id]
    assert first_users() == [author.id, older[0].author_id]
    created = client.post(POSTS, json={"title": "t", "body": "b"}, headers=headers).get_json()["id"]
    assert newest_posts() == [created, older[1].id]
    client.delete(f"{POSTS}/{created}", headers=headers)
    assert newest_posts() == [older[1].id, older[0].id]
    upload = {"file": (io.BytesIO(b'{"external_id": "x", "title": "t", "body": "b"}'), "posts.jsonl")}
    job = client.post(f"{POSTS}/import", data=upload, headers=headers, content_type="multipart/form-data")
    jobs.run(job.get_json()["id"])
    imported = newest_posts()
    assert imported[0] > created and imported[1] == older[1].id
    client.patch(f"/api/v1/admin/users/{author.id}", json={"is_active": False}, headers=admin_headers)
    assert newest_posts() == [older[1].id, older[0].id]
    assert first_users() == [older[0].author_id, older[1].author_id]
    client.patch(f"/api/v1/admin/users/{author.id}", json={"is_active": True}, headers=admin_headers)
    assert newest_posts() == imported
    assert first_users() == [author.id, older[0].author_id]
    body = {"username": "newcomer", "email": "n@example.com", "password": "a long passphrase"}
    registered = client.post("/api/v1/auth/register", json=body).get_json()["id"]
    assert first_users(100)[-1] == registered


@pytest.mark.parametrize("pulled", [False, True], ids=["followers-dropped", "pulled-author"])
def test_the_cached_first_feed_page_follows_every_write_at_once(app, client, login, redis_client, monkeypatch, pulled):
    """A reader's first feed page comes from the cache: a follow or unfollow drops it, and
    so does each change to a followed author's posts (created, deleted, imported; the
    author deactivated or reactivated), or, for an author over FEED_PULL_THRESHOLD
    followers, it is stale by the author's mark. Pages of 2, so a stale entry shows."""
    from app.jobs import service as jobs
    from tests.support.factories import FollowFactory

    reader = UserFactory()
    older = PostFactory.create_batch(2, author=UserFactory())
    FollowFactory(follower_id=reader.id, followed_id=older[0].author_id)
    author = UserFactory()
    first = PostFactory(author=author)
    reader_headers, author_headers = login(reader), login(author)
    admin_headers = login(AdminFactory())

    def feed() -> list[int]:
        """Read back from its cache entry, put there by the first read after the last write."""
        client.get(f"{FEED}?limit=2", headers=reader_headers)
        assert redis_client.exists(cache.feed_key(reader.id))
        return [item["id"] for item in client.get(f"{FEED}?limit=2", headers=reader_headers).get_json()["items"]]

    cache.clear()  # the factories wrote past the services
    if pulled:  # a pulled author already: no worker's drop to wait for
        monkeypatch.setitem(app.config, "FEED_PULL_THRESHOLD", 1)
        assert cache.pulled_author_changed(author.id, []) is True
    assert feed() == [older[1].id, older[0].id]
    client.put(f"{USERS}/{author.id}/follow", headers=reader_headers)
    assert feed() == [first.id, older[1].id]
    created = client.post(POSTS, json={"title": "t", "body": "b"}, headers=author_headers).get_json()["id"]
    assert feed() == [created, first.id]
    client.delete(f"{POSTS}/{created}", headers=author_headers)
    assert feed() == [first.id, older[1].id]
    upload = {"file": (io.BytesIO(b'{"external_id": "x", "title": "t", "body": "b"}'), "posts.jsonl")}
    job = client.post(f"{POSTS}/import", data=upload, headers=author_headers, content_type="multipart/form-data")
    jobs.run(job.get_json()["id"])
    imported = feed()
    assert imported[0] > created and imported[1] == first.id
    client.patch(f"/api/v1/admin/users/{author.id}", json={"is_active": False}, headers=admin_headers)
    assert feed() == [older[1].id, older[0].id]
    client.patch(f"/api/v1/admin/users/{author.id}", json={"is_active": True}, headers=admin_headers)
    assert feed() == imported
    client.delete(f"{USERS}/{author.id}/follow", headers=reader_headers)
    assert feed() == [older[1].id, older[0].id]


def test_a_reader_cannot_put_back_what_a_writer_just_invalidated(app, redis_client):
    key = cache.profile_key(1)
    cache.invalidate(key)
    cache.put(key, b"stale")
    assert redis_client.get(key) is None


def test_a_first_page_read_after_the_write_is_put_back_at_once(app, redis_client):
    key = cache.newest_posts_key()
    cache.invalidate(key)
    before_the_query = cache.tombstone_now(key)
    assert before_the_query  # the write's tombstone, still there
    cache.put_unless_written(key, b"fresh", before_the_query)
    assert redis_client.get(key) == b"fresh"


def test_a_first_page_read_before_a_write_is_not_put_back(app, redis_client):
    key = cache.newest_posts_key()
    for writes_before_the_reader in (0, 1):  # no tombstone yet, and an earlier write's
        for _ in range(writes_before_the_reader):
            cache.invalidate(key)
        before_the_query = cache.tombstone_now(key)
        cache.invalidate(key)  # a write commits while the reader queries
        cache.put_unless_written(key, b"stale", before_the_query)
        assert redis_client.get(key) is None, writes_before_the_reader
        redis_client.delete(cache.tombstone_key(key))


def test_with_read_replicas_no_first_page_is_put_back_while_its_tombstone_lasts(app, redis_client, monkeypatch):
    monkeypatch.setitem(app.extensions, READ_ENGINE_CHOOSER, lambda primary: primary)
    key = cache.newest_posts_key()
    cache.invalidate(key)
    cache.put_unless_written(key, b"maybe stale", cache.tombstone_now(key))  # a replica may lag
    assert redis_client.get(key) is None


def test_delete_cached_drops_only_cached_keys_and_keeps_readers_from_putting_them_back(app, redis_client):
    cached, absent = cache.post_key(1), cache.post_key(2)
    cache.put(cached, b"old")
    assert cache.delete_cached([cached, absent]) == 1
    cache.put_many([(cached, b"stale"), (absent, b"new")])
    assert [redis_client.get(k) for k in (cached, absent)] == [None, b"new"]


def test_put_many_skips_only_the_entries_just_invalidated(app, redis_client):
    fresh, invalidated, other = (cache.post_key(i) for i in (1, 2, 3))
    cache.invalidate(invalidated)
    cache.put_many([(fresh, b"one"), (invalidated, b"two"), (other, b"three")])
    assert [redis_client.get(k) for k in (fresh, invalidated, other)] == [b"one", None, b"three"]
    assert 0 < redis_client.ttl(fresh) <= 300 and 0 < redis_client.ttl(other) <= 300


def redis_reads(redis_client) -> int:
    return redis_calls(redis_client, "MGET")  # the cache reads with MGET


def test_a_second_read_is_served_by_the_process_until_redis_reports_a_change(app, redis_client, local_copies_on):
    key = cache.profile_key(1)
    redis_client.set(key, b"one")
    assert cache.get(key) == b"one"  # from Redis; this process keeps a copy
    reads = redis_reads(redis_client)
    assert [cache.get(key), cache.get(key)] == [b"one", b"one"]
    assert redis_reads(redis_client) == reads  # no round trip
    redis_client.set(key, b"two")  # as another process's fill or a hand edit would
    assert cache.get(key) == b"two"
    assert cache.get(key) == b"two"
    redis_client.delete(key)  # as a writer's invalidation
    assert cache.get(key) is None
    redis_client.set(key, b"three")
    assert cache.get_many([key, cache.post_key(9)]) == [b"three", None]
    redis_client.flushdb()
    assert cache.get(key) is None
    assert cache.stats() == {"hits": 6, "misses": 3, "hit_rate": 6 / 9}


def test_a_miss_after_a_write_goes_straight_to_postgres_until_redis_reports_a_fill(
    client, redis_client, count_queries, local_copies_on
):
    user = UserFactory(display_name="Before")
    key = cache.profile_key(user.id)
    cache.invalidate(key)  # as a write does: the entry gone, its tombstone refusing fills
    assert client.get(f"{USERS}/{user.id}").get_json()["display_name"] == "Before"
    reads = redis_reads(redis_client)
    with count_queries() as queries:
        assert client.get(f"{USERS}/{user.id}").get_json()["display_name"] == "Before"
    assert (queries.count, redis_reads(redis_client)) == (1, reads)  # the absence was kept
    redis_client.set(key, json.dumps({"id": user.id, "display_name": "Filled"}))  # another process's fill
    with count_queries() as queries:
        assert client.get(f"{USERS}/{user.id}").get_json()["display_name"] == "Filled"
    assert (queries.count, redis_reads(redis_client)) == (0, reads + 1)


def test_a_copy_goes_when_its_key_expires_in_redis(app, redis_client, local_copies_on):
    key = cache.post_key(1)
    redis_client.set(key, b"short-lived", px=100)
    assert cache.get(key) == b"short-lived"
    deadline = time.monotonic() + 3  # Redis expires keys in the background, ~10 times a second
    while cache.get(key) is not None:
        assert time.monotonic() < deadline, "the copy outlived its key"
        time.sleep(0.05)


def test_a_copy_is_served_at_most_its_local_ttl(app, redis_client, monkeypatch, local_copies_on):
    """CACHE_LOCAL_TTL_SECONDS bounds a copy's life should the reports stop without a sign."""
    monkeypatch.setitem(app.config, "CACHE_LOCAL_TTL_SECONDS", 1)
    monkeypatch.delitem(app.extensions, "cache_local", raising=False)  # made again with the new TTL
    key = cache.post_key(4)
    redis_client.set(key, b"kept")
    cache.get(key)
    reads = redis_reads(redis_client)
    assert cache.get_many([key, key]) == [b"kept", b"kept"]
    assert redis_reads(redis_client) == reads  # copies
    time.sleep(1.1)
    assert cache.get(key) == b"kept"
    assert redis_reads(redis_client) == reads + 1  # the copy had expired: read from Redis


def test_copies_are_forgotten_when_the_change_reports_stop(app, redis_client, monkeypatch, local_copies_on):
    monkeypatch.setattr(LocalCopies, "RETRY_SECONDS", 0.0)
    key = cache.profile_key(2)
    redis_client.set(key, b"before")
    cache.get(key)
    assert cache.get(key) == b"before"  # a copy
    # the connections that receive their own reports (this process's, and any other app's)
    listeners = [c["id"] for c in redis_client.client_list() if c["redir"] == c["id"]]
    assert listeners
    for listener in listeners:
        redis_client.client_kill_filter(_id=listener)
    redis_client.set(key, b"after")  # no report reaches this process now
    assert cache.get(key) == b"after"  # the lost connection is seen: copies are not trusted
    cache.get(key)  # reports are received again (a new connection) and a copy kept
    reads = redis_reads(redis_client)
    assert cache.get(key) == b"after"
    assert redis_reads(redis_client) == reads
    redis_client.set(key, b"again")
    assert cache.get(key) == b"again"


def test_local_copies_can_be_turned_off(app, redis_client, monkeypatch):
    monkeypatch.setitem(app.config, "CACHE_LOCAL_MAX_BYTES", 0)
    key = cache.profile_key(3)
    redis_client.set(key, b"one")
    reads = redis_reads(redis_client)
    assert [cache.get(key), cache.get(key)] == [b"one", b"one"]
    assert redis_reads(redis_client) == reads + 2


def test_copies_stay_within_their_room(app, redis_client, monkeypatch, local_copies_on):
    monkeypatch.setitem(app.config, "CACHE_LOCAL_MAX_BYTES", 140)  # an entry counts 64 bytes + its value
    monkeypatch.delitem(app.extensions, "cache_local", raising=False)  # made again with the new room
    small, large, other = cache.post_key(1), cache.post_key(2), cache.post_key(3)
    redis_client.mset({small: b"s" * 10, large: b"l" * 80, other: b"o" * 10})
    cache.get_many([small, large])
    reads = redis_reads(redis_client)
    assert cache.get(small) == b"s" * 10  # a copy
    assert redis_reads(redis_client) == reads
    assert cache.get(large) == b"l" * 80  # larger than the room: never kept
    assert redis_reads(redis_client) == reads + 1
    cache.get(other)  # kept; the least recently used copy makes room
    assert cache.get(small) == b"s" * 10
    assert redis_reads(redis_client) == reads + 3


def test_author_posts_fan_out_drops_every_cached_post_of_the_author(client, redis_client):
    from worker.tasks import invalidate_author_posts

    author = UserFactory()
    posts = PostFactory.create_batch(3, author=author)
    other = PostFactory()
    for post in [*posts, other]:
        client.get(f"{POSTS}/{post.id}")
    uncached = PostFactory(author=author)
    assert invalidate_author_posts.run(author.id) == 4
    assert [redis_client.exists(cache.post_key(p.id)) for p in posts] == [0, 0, 0]
    assert [redis_client.exists(cache.tombstone_key(cache.post_key(p.id))) for p in posts] == [1, 1, 1]
    # a post not cached gets no tombstone: each write is reported to every process's copies
    assert not redis_client.exists(cache.tombstone_key(cache.post_key(uncached.id)))
    assert redis_client.exists(cache.post_key(other.id))


def test_posts_of_deactivated_authors_are_hidden(client):
    post = PostFactory(author=UserFactory(is_active=False))
    assert client.get(f"{POSTS}/{post.id}").status_code == 404


@pytest.fixture
def cache_redis(app, monkeypatch):
    server = RedisServer().start()
    monkeypatch.setitem(
        app.extensions,
        "cache_redis",
        RedisStore._connect(app, server.url),
    )
    monkeypatch.setitem(app.extensions, "cache_scripts", {})
    yield server
    server.cleanup()


@pytest.mark.system  # starts and stops a Redis server of its own
def test_cache_redis_down_reads_from_postgres_and_writes_succeed(client, login, cache_redis):
    user = UserFactory(display_name="Before")
    headers = login(user)
    assert client.get(f"{USERS}/{user.id}").status_code == 200  # cached
    cache_redis.stop()
    assert client.get(f"{USERS}/{user.id}").get_json()["display_name"] == "Before"
    response = client.patch(f"{USERS}/me", json={"display_name": "During"}, headers=headers)
    assert response.status_code == 200
    assert client.get(f"{USERS}/{user.id}").get_json()["display_name"] == "During"
    post = client.post(POSTS, json={"title": "t", "body": "b"}, headers=headers)
    assert post.status_code == 201
    assert client.get(f"{POSTS}/{post.get_json()['id']}").status_code == 200
    cache_redis.start()  # back, and empty: it fills again
    client.get(f"{USERS}/{user.id}")
    assert client.get(f"{USERS}/{user.id}").get_json()["display_name"] == "During"
    assert cache.stats()["hits"] == 1


def test_cli_cache_stats_and_clear(app, client):
    user = UserFactory()
    client.get(f"{USERS}/{user.id}")
    client.get(f"{USERS}/{user.id}")
    runner = app.test_cli_runner()
    assert "hit rate 50.0%" in runner.invoke(args=["cache", "stats"]).output
    assert "1 cached entries removed" in runner.invoke(args=["cache", "clear"]).output
    assert cache.stats()["hits"] == 0


def test_cli_cache_clear_leaves_every_other_key_alone(app, client, redis_client):
    """The cache may share its Redis with the rate limits, the revocation mirror, the
    Celery broker and other programs: `flask cache clear` drops the cache's keys only."""
    from flask_jwt_extended import decode_token

    from app import queue
    from app.auth import revocation

    post = PostFactory()
    revocation.rebuild_mirror()
    for path in (f"{USERS}/{post.author_id}", f"{POSTS}/{post.id}", POSTS, USERS):
        assert client.get(path).status_code == 200
    tokens = open_session(UserFactory())
    assert (
        client.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {tokens['access_token']}"}).status_code
        == 204
    )
    assert client.post("/api/v1/auth/login", json={"login": "nobody", "password": "x"}).status_code == 401
    assert queue.send(queue.INVALIDATE_CACHE, [["user:v1:0"]])
    foreign = f"another-app:{cache.profile_key(post.author_id)}"
    redis_client.set(foreign, "theirs")

    keys = {key.decode() for key in redis_client.keys("*")}
    cached = {key for key in keys if key.startswith(cache.PREFIXES)}
    assert {
        cache.profile_key(post.author_id),
        cache.post_key(post.id),
        cache.newest_posts_key(),
        cache.users_key(),
    } <= cached
    others = keys - cached - {cache.HITS, cache.MISSES}
    claims = decode_token(tokens["access_token"])
    assert {
        revocation.READY,
        revocation.jti_key(claims["jti"]),
        revocation.sid_key(claims["sid"]),
        queue.SHORT,  # the broker's list of the queued invalidation
        foreign,
    } <= others
    assert any(key.startswith("LIMITS") for key in others)  # the login's rate-limit counters
    before = {key: redis_client.dump(key) for key in others}

    result = app.test_cli_runner().invoke(args=["cache", "clear"])
    assert result.exit_code == 0, result.output
    assert f"{len(cached)} cached entries removed" in result.output
    left = {key.decode() for key in redis_client.keys("*")}
    assert left == others
    assert {key: redis_client.dump(key) for key in left} == before
