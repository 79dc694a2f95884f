"""The admin API and the account CLI commands."""

from __future__ import annotations

import pytest

from app.db import db
from app.models import AuthSession, User
from tests.support.factories import AdminFactory, UserFactory
from tests.support.sessions import open_session

ADMIN_USERS = "/api/v1/admin/users"


def bearer(tokens: dict) -> dict:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def test_admin_lists_every_user_with_email_and_status(client, login):
    admin = AdminFactory()
    hidden = UserFactory(is_active=False, email="Hidden.Person@example.org")
    body = client.get(ADMIN_USERS, headers=login(admin)).get_json()
    by_id = {u["id"]: u for u in body["items"]}
    assert by_id[hidden.id]["email"] == hidden.email
    assert by_id[hidden.id]["is_active"] is False
    assert by_id[admin.id]["role"] == "admin"
    found = client.get(f"{ADMIN_USERS}?q=HIDDEN.P", headers=login(admin)).get_json()["items"]
    assert [u["id"] for u in found] == [hidden.id]


def test_admin_promotes_and_deactivates_and_sessions_end(client, login):
    admin_headers = login(AdminFactory())
    target = UserFactory()
    tokens = open_session(target)
    response = client.patch(f"{ADMIN_USERS}/{target.id}", json={"role": "admin"}, headers=admin_headers)
    assert response.status_code == 200
    assert response.get_json()["role"] == "admin"
    response = client.patch(f"{ADMIN_USERS}/{target.id}", json={"is_active": False}, headers=admin_headers)
    assert response.status_code == 200 and response.get_json()["is_active"] is False
    assert client.get("/api/v1/users/me", headers=bearer(tokens)).status_code == 401
    # routes that read only the token's user id (no user query) turn it away as well
    assert client.get("/api/v1/feed", headers=bearer(tokens)).status_code == 401
    assert client.post("/api/v1/posts", json={"title": "t", "body": "b"}, headers=bearer(tokens)).status_code == 401
    assert (
        client.post("/api/v1/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}).status_code
        == 401
    )
    db.session.expire_all()
    sessions = db.session.query(AuthSession).filter_by(user_id=target.id).all()
    assert [s.revoked_at is not None for s in sessions] == [True]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"role": "root"}, "role"),
        ({"is_active": "no"}, "is_active"),
        ({"is_active": 0}, "is_active"),
        ({}, "_schema"),
        ({"email": "x@example.com"}, "email"),
    ],
)
def test_admin_update_validation(client, login, body, field):
    target = UserFactory()
    response = client.patch(f"{ADMIN_USERS}/{target.id}", json=body, headers=login(AdminFactory()))
    assert response.status_code == 422
    assert field in response.get_json()["errors"]


def test_admin_cannot_lock_themselves_out_and_unknown_is_404(client, login):
    admin = AdminFactory()
    headers = login(admin)
    assert client.patch(f"{ADMIN_USERS}/{admin.id}", json={"role": "user"}, headers=headers).status_code == 422
    assert client.patch(f"{ADMIN_USERS}/999999", json={"role": "user"}, headers=headers).status_code == 404


def test_cli_set_role_deactivate_activate_and_revoke_sessions(app, client):
    user = UserFactory(username="carla")
    tokens = open_session(user)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["users", "set-role", "CARLA", "admin"]).exit_code == 0
    assert db.session.get(User, user.id).role == "admin"
    result = runner.invoke(args=["users", "revoke-sessions", "carla"])
    assert "1 session(s)" in result.output
    assert client.get("/api/v1/users/me", headers=bearer(tokens)).status_code == 401
    assert runner.invoke(args=["users", "deactivate", "carla"]).exit_code == 0
    db.session.expire_all()
    assert db.session.get(User, user.id).is_active is False
    assert runner.invoke(args=["users", "activate", "carla"]).exit_code == 0
    db.session.expire_all()
    assert db.session.get(User, user.id).is_active is True
    missing = runner.invoke(args=["users", "deactivate", "nobody"])
    assert missing.exit_code != 0 and "No user named nobody" in missing.output
    assert runner.invoke(args=["users", "set-role", "carla", "root"]).exit_code != 0
