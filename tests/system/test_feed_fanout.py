"""A post by an account with many followers: the request answers without touching its
followers' cached feeds. The first after the account became pulled has a real worker
drop them (pages cached before hold no mark of the account); later ones move its mark,
and the followers see them at once."""

from __future__ import annotations

import base64
import json
import time

import pytest
import redis

from app import cache, queue
from app.users import service as users
from tests.support.factories import PostFactory, UserFactory
from tests.support.processes import Worker, service_env
from tests.support.sessions import open_session


@pytest.mark.no_transaction
def test_followers_of_an_account_over_the_threshold_see_its_posts(
    app, committed, client, test_db_url, tmp_path, monkeypatch
):
    monkeypatch.setitem(app.config, "FEED_PULL_THRESHOLD", 3)
    with app.app_context():
        star, small, old = UserFactory(), UserFactory(), UserFactory()
        old_post = PostFactory(author=old).id  # every feed holds it: a first page to cache
        fans = [UserFactory() for _ in range(3)]
        small_fan = UserFactory()
        for fan in fans:
            users.follow(fan.id, star.id)
            users.follow(fan.id, old.id)
        users.follow(small_fan.id, small.id)
        users.follow(small_fan.id, old.id)
        tokens = {user.id: open_session(user)["access_token"] for user in [star, small, *fans, small_fan]}
        fan_ids, star_id, small_id, small_fan_id = [fan.id for fan in fans], star.id, small.id, small_fan.id
    raw = redis.Redis.from_url(app.config["REDIS_URL"])

    def feed_ids(user_id: int) -> list[int]:
        response = client.get("/api/v1/feed", headers={"Authorization": f"Bearer {tokens[user_id]}"})
        assert response.status_code == 200, response.json
        return [item["id"] for item in response.json["items"]]

    def post(user_id: int) -> int:
        body = {"title": "News", "body": f"From {user_id}."}
        response = client.post("/api/v1/posts", json=body, headers={"Authorization": f"Bearer {tokens[user_id]}"})
        assert response.status_code == 201, response.json
        return response.json["id"]

    raw.delete(*raw.keys("tombstone:*") or ["-"])  # the follows' tombstones, as if seconds had passed
    for reader in [*fan_ids, small_fan_id]:
        assert feed_ids(reader) == [old_post]  # the first page is cached now
        assert raw.exists(cache.feed_key(reader))

    # under the threshold: the request itself drops the follower's page
    small_post = post(small_id)
    assert not raw.exists(cache.feed_key(small_fan_id))
    assert feed_ids(small_fan_id) == [small_post, old_post]

    # at the threshold, the first time: the answer comes first; the followers' pages wait
    # for a worker, one queued drop for both posts
    star_posts = [post(star_id), post(star_id)]
    assert all(raw.exists(cache.feed_key(fan)) for fan in fan_ids)
    assert feed_ids(fan_ids[0]) == [old_post]  # the cached page, until the worker has run
    assert queued(raw, queue.DROP_FOLLOWER_FEEDS) == [[star_id]]

    worker = Worker(service_env(app, test_db_url), tmp_path / "worker.log", name="short", queues=[queue.SHORT])
    try:
        worker.wait_ready()
        deadline = time.monotonic() + 20
        while any(raw.exists(cache.feed_key(fan)) for fan in fan_ids):
            assert time.monotonic() < deadline, f"the followers' feeds were not dropped\n{worker.log()}"
            time.sleep(0.05)
    finally:
        worker.stop()
    assert [feed_ids(fan) for fan in fan_ids] == [[*star_posts[::-1], old_post]] * len(fan_ids)

    # then (no worker running): nothing queued, and each follower sees the next post on
    # their next read, their cached page stale by the star's mark
    newest = post(star_id)
    assert queued(raw, queue.DROP_FOLLOWER_FEEDS) == []
    assert all(raw.exists(cache.feed_key(fan)) for fan in fan_ids)
    assert [feed_ids(fan) for fan in fan_ids] == [[newest, *star_posts[::-1], old_post]] * len(fan_ids)


def queued(raw, task: str) -> list[list]:
    """The arguments of each `task` message waiting in the short queue (Celery's Redis
    transport keeps a queue as a list of JSON messages)."""
    found = []
    for message in raw.lrange(queue.SHORT, 0, -1):
        message = json.loads(message)
        if message["headers"]["task"] == task:
            found.append(json.loads(base64.b64decode(message["body"]))[0])
    return found
