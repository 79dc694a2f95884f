"""The per-request account check without a PostgreSQL round trip (app/auth/tokens.py
account_active): each process remembers for ACCOUNT_RECHECK_SECONDS that an account was
active; a change through the API or the CLI is refused at once (a mark in the
revocation mirror), one made by hand in SQL once that memo is stale; while the mirror
cannot be trusted every check asks PostgreSQL. Also: how many statements each write
sends, and the bound on password hashing per process."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import update

from app.auth import revocation
from app.db import db
from app.models import User
from tests.support.factories import PASSWORD, AdminFactory, FollowFactory, PostFactory, UserFactory
from tests.support.sessions import open_session

FEED = "/api/v1/feed"


def bearer(user) -> dict:
    return {"Authorization": f"Bearer {open_session(user)['access_token']}"}


@pytest.fixture
def mirror_ready(app):
    """The revocation mirror complete, as once a worker has built it."""
    revocation.rebuild_mirror()


def deactivate_by_hand(user) -> None:
    db.session.execute(update(User).where(User.id == user.id).values(is_active=False))
    db.session.commit()


def test_an_account_read_lately_is_not_asked_again(client, count_queries, mirror_ready):
    headers = bearer(UserFactory())
    assert client.get(FEED, headers=headers).status_code == 200  # asks, and remembers
    with count_queries() as counter:
        assert client.get(FEED, headers=headers).status_code == 200
    assert [s for s in counter.statements if "is_active" in s] == []


def test_deactivated_through_the_api_is_refused_at_once_despite_the_memo(client, login, mirror_ready):
    """A token whose session outlived the deactivation (a login racing it) still dies at
    once: the mark tells every process to ask PostgreSQL."""
    user = UserFactory()
    assert client.get(FEED, headers=bearer(user)).status_code == 200  # remembered as active
    response = client.patch(f"/api/v1/admin/users/{user.id}", json={"is_active": False}, headers=login(AdminFactory()))
    assert response.status_code == 200
    late = bearer(user)  # a session the deactivation did not end
    response = client.get(FEED, headers=late)
    assert response.status_code == 401
    assert "no longer exists or is inactive" in response.get_json()["detail"]
    assert client.put(f"/api/v1/users/{UserFactory().id}/follow", headers=late).status_code == 401


def test_reactivated_through_the_api_works_at_once(client, login, mirror_ready):
    user = UserFactory()
    admin = login(AdminFactory())
    client.patch(f"/api/v1/admin/users/{user.id}", json={"is_active": False}, headers=admin)
    assert client.get(FEED, headers=bearer(user)).status_code == 401
    client.patch(f"/api/v1/admin/users/{user.id}", json={"is_active": True}, headers=admin)
    assert client.get(FEED, headers=bearer(user)).status_code == 200


def test_deactivated_by_hand_is_refused_once_the_memo_is_stale(app, client, mirror_ready, monkeypatch):
    user = UserFactory()
    headers = bearer(user)
    assert client.get(FEED, headers=headers).status_code == 200
    deactivate_by_hand(user)
    assert client.get(FEED, headers=headers).status_code == 200  # within the memo's life
    monkeypatch.setitem(app.config, "ACCOUNT_RECHECK_SECONDS", 0)  # as if the time had passed
    assert client.get(FEED, headers=headers).status_code == 401
    monkeypatch.setitem(app.config, "ACCOUNT_RECHECK_SECONDS", 60)
    assert client.get(FEED, headers=headers).status_code == 401  # an inactive account is not remembered


def test_without_a_complete_mirror_every_check_asks_postgresql(client, mirror_ready, redis_client):
    user = UserFactory()
    headers = bearer(user)
    assert client.get(FEED, headers=headers).status_code == 200  # remembered
    redis_client.delete(revocation.READY)  # Redis restarted, say: a mark may be lost
    deactivate_by_hand(user)
    assert client.get(FEED, headers=headers).status_code == 401


def test_a_memo_from_before_the_mirror_was_incomplete_is_not_trusted(client, mirror_ready, redis_client):
    user = UserFactory()
    headers = bearer(user)
    assert client.get(FEED, headers=headers).status_code == 200  # remembered
    redis_client.delete(revocation.READY)
    assert client.get(FEED, headers=headers).status_code == 200  # asked PostgreSQL; the memo emptied
    revocation.rebuild_mirror()
    deactivate_by_hand(user)
    assert client.get(FEED, headers=headers).status_code == 401


def test_a_write_by_an_account_gone_by_hand_writes_nothing(client, mirror_ready):
    """Within the memo's life the write's own statement checks the account."""
    user, other = UserFactory(), UserFactory()
    headers = bearer(user)
    assert client.get(FEED, headers=headers).status_code == 200
    deactivate_by_hand(user)
    assert client.post("/api/v1/posts", json={"title": "t", "body": "b"}, headers=headers).status_code == 401
    assert client.put(f"/api/v1/users/{other.id}/follow", headers=headers).status_code == 401
    assert client.patch("/api/v1/users/me", json={"bio": "x"}, headers=headers).status_code == 401
    db.session.expire_all()
    assert db.session.get(User, user.id).post_count == 0
    assert db.session.get(User, other.id).follower_count == 0


# -- statements per write ---------------------------------------------------------------


def statements_of(client, count_queries, method: str, url: str, headers: dict, status: int, **kwargs) -> list[str]:
    db.session.expunge_all()
    with count_queries() as counter:
        response = client.open(url, method=method, headers=headers, **kwargs)
    assert response.status_code == status, response.get_json()
    return [s.split()[0] for s in counter.statements]


def test_each_write_is_one_statement(client, count_queries, mirror_ready):
    """BEGIN and COMMIT aside: a new post (with the followers to notify), an edit, a
    follow, an unfollow, a profile change one statement each."""
    user, other = UserFactory(), UserFactory()
    FollowFactory(follower_id=other.id, followed_id=user.id)
    headers, other_id = bearer(user), other.id
    assert client.get(FEED, headers=headers).status_code == 200  # the account remembered
    post = client.post("/api/v1/posts", json={"title": "t", "body": "b"}, headers=headers)
    etag = post.headers["ETag"]
    post_id = post.get_json()["id"]

    new_post = statements_of(
        client, count_queries, "POST", "/api/v1/posts", headers, 201, json={"title": "t", "body": "b"}
    )
    assert new_post == ["WITH"]
    edit = {**headers, "If-Match": etag}
    assert statements_of(client, count_queries, "PATCH", f"/api/v1/posts/{post_id}", edit, 200, json={"body": "c"}) == [
        "UPDATE"
    ]
    assert statements_of(client, count_queries, "PUT", f"/api/v1/users/{other_id}/follow", headers, 204) == ["WITH"]
    assert statements_of(client, count_queries, "DELETE", f"/api/v1/users/{other_id}/follow", headers, 204) == ["WITH"]
    assert statements_of(client, count_queries, "PATCH", "/api/v1/users/me", headers, 200, json={"bio": "x"}) == [
        "UPDATE"
    ]


def test_a_new_post_drops_the_feed_of_each_follower(client, login):
    author, fan = UserFactory(), UserFactory()
    FollowFactory(follower_id=fan.id, followed_id=author.id)
    PostFactory(author=author)
    fan_headers = login(fan)
    assert len(client.get(FEED, headers=fan_headers).get_json()["items"]) == 1  # cached
    client.post("/api/v1/posts", json={"title": "new", "body": "b"}, headers=login(author))
    assert client.get(FEED, headers=fan_headers).get_json()["items"][0]["title"] == "new"


def test_follows_keep_both_counters_and_refuse_an_inactive_target(client, login):
    fan, star, gone = UserFactory(), UserFactory(), UserFactory(is_active=False)
    headers = login(fan)
    for _ in range(2):  # idempotent
        assert client.put(f"/api/v1/users/{star.id}/follow", headers=headers).status_code == 204
    assert client.get(f"/api/v1/users/{star.id}").get_json()["follower_count"] == 1
    assert client.get(f"/api/v1/users/{fan.id}").get_json()["following_count"] == 1
    for _ in range(2):
        assert client.delete(f"/api/v1/users/{star.id}/follow", headers=headers).status_code == 204
    assert client.get(f"/api/v1/users/{star.id}").get_json()["follower_count"] == 0
    assert client.get(f"/api/v1/users/{fan.id}").get_json()["following_count"] == 0
    assert client.put(f"/api/v1/users/{gone.id}/follow", headers=headers).status_code == 404
    assert client.delete(f"/api/v1/users/{gone.id}/follow", headers=headers).status_code == 404


# -- password hashing bound -------------------------------------------------------------


def test_a_login_waits_for_a_hashing_slot_then_gets_503(app, client, monkeypatch):
    user = UserFactory()
    monkeypatch.setitem(app.config, "PASSWORD_HASH_WAIT_SECONDS", 0.05)
    monkeypatch.setitem(app.config, "PASSWORD_HASHES_PER_PROCESS", 1)
    monkeypatch.delitem(app.extensions, "password_hashing", raising=False)
    client.post("/api/v1/auth/login", json={"login": "nobody", "password": "x" * 12})  # made with one slot
    slots = app.extensions["password_hashing"].slots
    slots.acquire()  # another thread's login, hashing
    try:
        response = client.post("/api/v1/auth/login", json={"login": user.username, "password": PASSWORD})
        assert response.status_code == 503
        # ours, or the login limit's reset if later (Flask-Limiter keeps the later one)
        assert int(response.headers["Retry-After"]) >= app.config["RETRY_AFTER_SECONDS"]
    finally:
        slots.release()
    response = client.post("/api/v1/auth/login", json={"login": user.username, "password": PASSWORD})
    assert response.status_code == 200


def _one_login_hashing(app, client, monkeypatch, waiters):
    """This process's hashing with one slot, taken by a login that ends in half a second."""
    monkeypatch.setitem(app.config, "PASSWORD_HASH_WAIT_SECONDS", 30)
    monkeypatch.setitem(app.config, "PASSWORD_HASHES_PER_PROCESS", 1)
    monkeypatch.setitem(app.config, "PASSWORD_HASH_WAITERS_PER_PROCESS", waiters)
    monkeypatch.delitem(app.extensions, "password_hashing", raising=False)
    client.post("/api/v1/auth/login", json={"login": "nobody", "password": "x" * 12})  # made
    hashing = app.extensions["password_hashing"]
    assert hashing.admitted.acquire(timeout=5)
    assert hashing.slots.acquire(timeout=5)
    ends = threading.Timer(0.5, hashing.slots.release)
    ends.start()
    return hashing, ends


def test_a_login_within_the_waiting_bound_waits_for_its_turn(app, client, monkeypatch):
    user = UserFactory()
    hashing, ends = _one_login_hashing(app, client, monkeypatch, waiters=1)
    try:
        response = client.post("/api/v1/auth/login", json={"login": user.username, "password": PASSWORD})
        assert response.status_code == 200
    finally:
        ends.join()
        hashing.admitted.release()


def test_a_login_beyond_the_waiting_ones_gets_503_without_taking_a_thread(app, client, monkeypatch):
    user = UserFactory()
    hashing, ends = _one_login_hashing(app, client, monkeypatch, waiters=1)
    assert hashing.admitted.acquire(timeout=5)  # a second login, waiting for its turn
    try:
        # let wait, it would get its turn when the first ends and answer 200
        response = client.post("/api/v1/auth/login", json={"login": user.username, "password": PASSWORD})
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) >= app.config["RETRY_AFTER_SECONDS"]
    finally:
        ends.join()
        hashing.admitted.release()
        hashing.admitted.release()
    response = client.post("/api/v1/auth/login", json={"login": user.username, "password": PASSWORD})
    assert response.status_code == 200
