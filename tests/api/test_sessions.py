"""Sessions: login, refresh rotation and reuse detection, logout, passwords, and the
revocation check with Redis up, down, and restarted."""

from __future__ import annotations

import pytest
from flask_jwt_extended import decode_token
from sqlalchemy import delete, select

from app import queue
from app.auth import revocation
from app.db import db
from app.models import AuthSession, RevokedToken, User
from app.redis_store import RedisStore
from tests.support.counting import redis_calls
from tests.support.factories import PASSWORD, FollowFactory, PostFactory, UserFactory
from tests.support.redis_server import RedisServer

AUTH = "/api/v1/auth"
ME = "/api/v1/users/me"
NEW_PASSWORD = "a brand new passphrase"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def log_in(client, username: str, password: str = PASSWORD, **headers) -> dict:
    response = client.post(f"{AUTH}/login", json={"login": username, "password": password}, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.fixture
def alice():
    return UserFactory(username="alice")


def test_login_opens_a_session_that_lists_as_current(client, alice):
    pair = log_in(client, "alice", **{"User-Agent": "pytest-browser/1.0"})
    body = client.get(f"{AUTH}/sessions", headers=bearer(pair["access_token"])).get_json()
    (session,) = body["items"]
    assert session["current"] is True
    assert session["user_agent"] == "pytest-browser/1.0"
    assert session["ip"] == "127.0.0.1"
    claims = decode_token(pair["access_token"])
    assert claims["sid"] == session["id"]


def test_refresh_rotates_and_a_replayed_refresh_token_ends_the_session(client, alice):
    first = log_in(client, "alice")
    second = client.post(f"{AUTH}/refresh", headers=bearer(first["refresh_token"])).get_json()
    assert client.get(ME, headers=bearer(second["access_token"])).status_code == 200
    # the first refresh token was used: presenting it again is a replay
    replay = client.post(f"{AUTH}/refresh", headers=bearer(first["refresh_token"]))
    assert replay.status_code == 401
    assert "already used" in replay.get_json()["detail"]
    # ... which ended the session: its newest refresh token and its access tokens die
    assert client.post(f"{AUTH}/refresh", headers=bearer(second["refresh_token"])).status_code == 401
    assert client.get(ME, headers=bearer(second["access_token"])).status_code == 401
    assert client.get(ME, headers=bearer(first["access_token"])).status_code == 401
    session = db.session.scalars(select(AuthSession)).one()
    assert session.revoked_reason == "refresh-token-reuse"


def test_logout_kills_this_access_token_and_refresh_token_at_once(client, alice):
    mine = log_in(client, "alice")
    other_device = log_in(client, "alice")
    assert client.post(f"{AUTH}/logout", headers=bearer(mine["access_token"])).status_code == 204
    assert client.get(ME, headers=bearer(mine["access_token"])).status_code == 401
    assert client.post(f"{AUTH}/refresh", headers=bearer(mine["refresh_token"])).status_code == 401
    assert client.get(ME, headers=bearer(other_device["access_token"])).status_code == 200
    jti = decode_token(mine["access_token"])["jti"]
    assert db.session.get(RevokedToken, jti) is not None


def test_logout_all_ends_every_session(client, alice):
    pairs = [log_in(client, "alice") for _ in range(3)]
    assert client.post(f"{AUTH}/logout-all", headers=bearer(pairs[0]["access_token"])).status_code == 204
    for pair in pairs:
        assert client.get(ME, headers=bearer(pair["access_token"])).status_code == 401
        assert client.post(f"{AUTH}/refresh", headers=bearer(pair["refresh_token"])).status_code == 401


def test_end_one_of_my_sessions_but_not_someone_elses(client, alice):
    UserFactory(username="mallory")
    phone, laptop = log_in(client, "alice"), log_in(client, "alice")
    mallory = log_in(client, "mallory")
    phone_sid = decode_token(phone["access_token"])["sid"]
    assert client.delete(f"{AUTH}/sessions/{phone_sid}", headers=bearer(mallory["access_token"])).status_code == 404
    assert client.get(ME, headers=bearer(phone["access_token"])).status_code == 200
    assert client.delete(f"{AUTH}/sessions/{phone_sid}", headers=bearer(laptop["access_token"])).status_code == 204
    assert client.get(ME, headers=bearer(phone["access_token"])).status_code == 401
    listed = client.get(f"{AUTH}/sessions", headers=bearer(laptop["access_token"])).get_json()["items"]
    assert [s["id"] for s in listed] == [decode_token(laptop["access_token"])["sid"]]
    unknown = "00000000-0000-0000-0000-000000000000"
    assert client.delete(f"{AUTH}/sessions/{unknown}", headers=bearer(laptop["access_token"])).status_code == 404
    assert client.delete(f"{AUTH}/sessions/not-a-uuid", headers=bearer(laptop["access_token"])).status_code == 404


def test_password_change_ends_every_other_session(client, alice):
    here, elsewhere = log_in(client, "alice"), log_in(client, "alice")
    body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    assert client.post(f"{AUTH}/password", json=body, headers=bearer(here["access_token"])).status_code == 204
    assert client.get(ME, headers=bearer(here["access_token"])).status_code == 200
    assert client.get(ME, headers=bearer(elsewhere["access_token"])).status_code == 401
    assert client.post(f"{AUTH}/login", json={"login": "alice", "password": PASSWORD}).status_code == 401
    log_in(client, "alice", NEW_PASSWORD)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"current_password": "wrong password", "new_password": NEW_PASSWORD}, "current_password"),
        ({"current_password": PASSWORD, "new_password": "short"}, "new_password"),
        ({"current_password": PASSWORD, "new_password": "1234567890"}, "new_password"),
        ({"current_password": PASSWORD, "new_password": "QwErTyUiOp"}, "new_password"),
        ({"current_password": PASSWORD, "new_password": "x" * 129}, "new_password"),
        ({"current_password": PASSWORD}, "new_password"),
    ],
)
def test_password_change_validation(client, alice, body, field):
    pair = log_in(client, "alice")
    response = client.post(f"{AUTH}/password", json=body, headers=bearer(pair["access_token"]))
    assert response.status_code == 422
    assert field in response.get_json()["errors"]
    log_in(client, "alice")  # the old password still works


@pytest.mark.parametrize("password", ["1234567890", "qwertyuiop", "Password12"[:0] + "homelesspa"])
def test_common_passwords_are_refused_at_registration(client, password):
    body = {"username": "newuser", "email": "n@example.com", "password": password}
    response = client.post(f"{AUTH}/register", json=body)
    assert response.status_code == 422
    assert "too common" in response.get_json()["errors"]["password"][0]


def test_deactivated_user_tokens_stop_working(client, alice):
    followed = UserFactory()
    FollowFactory(follower_id=alice.id, followed_id=followed.id)
    PostFactory(author=followed)
    pair = log_in(client, "alice")
    assert len(client.get("/api/v1/feed", headers=bearer(pair["access_token"])).get_json()["items"]) == 1
    alice.is_active = False  # flipped by hand: no session was revoked
    db.session.commit()
    assert client.get(ME, headers=bearer(pair["access_token"])).status_code == 401
    # the feed query itself reads nothing for an inactive reader, then says why
    assert client.get("/api/v1/feed", headers=bearer(pair["access_token"])).status_code == 401
    assert client.get("/api/v1/jobs", headers=bearer(pair["access_token"])).status_code == 401
    assert client.post(f"{AUTH}/refresh", headers=bearer(pair["refresh_token"])).status_code == 401


def test_a_user_deleted_by_hand_gets_401_not_a_500(client, alice):
    """A user row deleted in SQL while a token lives: every route refuses the token
    (a write must not reach the foreign key as a 500)."""
    other = UserFactory()
    headers = bearer(log_in(client, "alice")["access_token"])
    db.session.execute(delete(User).where(User.id == alice.id))
    db.session.commit()
    assert client.post("/api/v1/posts", json={"title": "t", "body": "b"}, headers=headers).status_code == 401
    assert client.patch(ME, json={"bio": "x"}, headers=headers).status_code == 401
    assert client.put(f"/api/v1/users/{other.id}/follow", headers=headers).status_code == 401
    assert client.post("/api/v1/users/me/export", headers=headers).status_code == 401
    assert client.get("/api/v1/feed", headers=headers).status_code == 401


# -- the revocation mirror --------------------------------------------------------------


def test_with_the_mirror_ready_revocations_are_answered_by_redis(client, alice, redis_client):
    revocation.rebuild_mirror()
    pair = log_in(client, "alice")
    client.post(f"{AUTH}/logout", headers=bearer(pair["access_token"]))
    claims = decode_token(pair["access_token"])
    assert redis_client.exists(revocation.jti_key(claims["jti"]))
    assert 0 < redis_client.ttl(revocation.sid_key(claims["sid"])) <= 30 * 24 * 3600 + 1
    assert 0 < redis_client.ttl(revocation.jti_key(claims["jti"])) <= 15 * 60 + 1
    # Redis alone answers now: even with the PostgreSQL record gone, the token is refused
    db.session.execute(RevokedToken.__table__.delete())
    db.session.execute(AuthSession.__table__.update().values(revoked_at=None))
    db.session.commit()
    assert client.get(ME, headers=bearer(pair["access_token"])).status_code == 401


def test_a_token_checked_once_is_checked_again_without_redis_and_a_revocation_counts_at_once(
    client, alice, redis_client, local_copies_on
):
    revocation.rebuild_mirror()
    pair = log_in(client, "alice")
    headers = bearer(pair["access_token"])
    assert client.get(ME, headers=headers).status_code == 200
    reads = redis_calls(redis_client, "MGET")
    assert client.get(ME, headers=headers).status_code == 200
    assert redis_calls(redis_client, "MGET") == reads  # this process's copies answered
    # another process revokes the session: it writes the mirror key, Redis reports it
    redis_client.set(revocation.sid_key(decode_token(pair["access_token"])["sid"]), 1)
    assert client.get(ME, headers=headers).status_code == 401


def test_mirror_not_ready_answers_from_postgres_and_queues_one_rebuild(client, alice, redis_client):
    pair = log_in(client, "alice")
    client.post(f"{AUTH}/logout", headers=bearer(pair["access_token"]))
    redis_client.flushdb()  # the mirror is lost
    assert client.get(ME, headers=bearer(pair["access_token"])).status_code == 401
    assert redis_client.exists(revocation.REBUILD_QUEUED)
    assert redis_client.llen(queue.SHORT) == 1  # the rebuild task, queued once
    client.get(ME, headers=bearer(pair["access_token"]))
    assert redis_client.llen(queue.SHORT) == 1
    assert revocation.rebuild_mirror() == 2
    assert redis_client.get(revocation.READY).decode() == redis_client.info("server")["run_id"]


@pytest.fixture
def own_redis(app, monkeypatch):
    """The app talks to a Redis server this test may stop and restart."""
    server = RedisServer(persist=True).start()
    monkeypatch.setitem(app.extensions, "redis", RedisStore._connect(app, server.url))
    monkeypatch.setitem(revocation._server, "run_id", None)
    yield server
    server.cleanup()


@pytest.mark.system  # starts and stops a Redis server of its own
def test_redis_down_never_locks_out_and_never_lets_a_revoked_token_in(client, alice, own_redis):
    revocation.rebuild_mirror()
    kept, ended = log_in(client, "alice"), log_in(client, "alice")
    client.post(f"{AUTH}/logout", headers=bearer(ended["access_token"]))
    own_redis.stop()
    assert client.get(ME, headers=bearer(kept["access_token"])).status_code == 200
    assert client.get(ME, headers=bearer(ended["access_token"])).status_code == 401
    # revoking while Redis is down still holds
    assert client.post(f"{AUTH}/logout", headers=bearer(kept["access_token"])).status_code == 204
    assert client.get(ME, headers=bearer(kept["access_token"])).status_code == 401
    assert client.post(f"{AUTH}/login", json={"login": "alice", "password": PASSWORD}).status_code == 200


@pytest.mark.system  # starts and stops a Redis server of its own
def test_redis_restarted_with_old_data_does_not_forget_revocations_made_while_down(client, alice, own_redis):
    revocation.rebuild_mirror()
    pair = log_in(client, "alice")
    assert client.get(ME, headers=bearer(pair["access_token"])).status_code == 200
    own_redis.stop()
    client.post(f"{AUTH}/logout", headers=bearer(pair["access_token"]))  # mirrored nowhere
    own_redis.start()  # reloads its file: the old ready marker, none of the new revocation
    assert client.get(ME, headers=bearer(pair["access_token"])).status_code == 401
    revocation.rebuild_mirror()
    assert client.get(ME, headers=bearer(pair["access_token"])).status_code == 401


@pytest.mark.system  # starts and stops a Redis server of its own
def test_redis_restarted_empty_does_not_forget_revocations(client, alice, own_redis):
    revocation.rebuild_mirror()
    pair = log_in(client, "alice")
    client.post(f"{AUTH}/logout", headers=bearer(pair["access_token"]))
    own_redis.restart_empty()
    assert client.get(ME, headers=bearer(pair["access_token"])).status_code == 401


def test_sync_and_purge(client, alice, redis_client):
    pair = log_in(client, "alice")
    client.post(f"{AUTH}/logout", headers=bearer(pair["access_token"]))
    assert revocation.sync_recent() == 2  # not ready: a full rebuild
    assert revocation.sync_recent() == 2  # ready: the recent ones again (idempotent)
    db.session.execute(RevokedToken.__table__.update().values(expires_at=RevokedToken.revoked_at))
    db.session.execute(AuthSession.__table__.update().values(expires_at=AuthSession.created_at))
    db.session.commit()
    assert revocation.purge_expired() == {"revoked_tokens": 1, "sessions": 1}


@pytest.mark.system  # starts and stops a Redis server of its own
def test_a_revocation_made_while_redis_was_down_holds_after_a_quiet_restart(client, alice, own_redis):
    """No request reaches the process while Redis is down: the restart raises no error
    here (redis-py reconnects quietly), and the check must still notice it."""
    from app.auth import service

    revocation.rebuild_mirror()
    pair = log_in(client, "alice")
    assert client.get(ME, headers=bearer(pair["access_token"])).status_code == 200
    own_redis.stop()
    service.revoke_all_sessions(alice.id, reason="revoked-by-admin")  # mirrored nowhere
    own_redis.start()  # reloads its file: the old marker, none of the new revocation
    assert client.get(ME, headers=bearer(pair["access_token"])).status_code == 401
