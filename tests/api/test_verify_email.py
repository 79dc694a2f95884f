"""Verified email: the mail at registration, POST /auth/verify-email and its resend,
changing the address (a fresh login, then a verification), and the setting that
requires a verified address to post."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.db import db
from app.models import OutboxMail, User
from tests.support.factories import PASSWORD, UserFactory
from tests.support.smtp_server import deliver_outbox, token_in

REGISTER = "/api/v1/auth/register"
VERIFY = "/api/v1/auth/verify-email"
RESEND = "/api/v1/auth/verify-email/resend"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
ME = "/api/v1/users/me"
POSTS = "/api/v1/posts"
NEW_POST = {"title": "Hi", "body": "Hello."}


def next_token(mail_on) -> str:
    before = len(mail_on.messages)
    assert deliver_outbox() == 1
    return token_in(mail_on.wait_for(before + 1)[-1])


def test_registration_mails_a_verification_and_the_token_verifies(client, mail_on):
    response = client.post(REGISTER, json={"username": "vera", "email": "Vera@example.com", "password": PASSWORD})
    assert response.status_code == 201
    token = next_token(mail_on)
    assert mail_on.recipients == [["Vera@example.com"]]
    assert mail_on.messages[0]["Subject"] == "Confirm your email address for Postboard"
    headers = {"Authorization": f"Bearer {_login(client, 'vera')}"}
    assert client.get(ME, headers=headers).get_json()["email_verified"] is False
    assert client.post(VERIFY, json={"token": token}).status_code == 204
    assert client.get(ME, headers=headers).get_json()["email_verified"] is True
    again = client.post(VERIFY, json={"token": token})
    assert again.status_code == 422 and list(again.get_json()["errors"]) == ["token"]


def test_without_mail_registration_sends_nothing(client):
    response = client.post(REGISTER, json={"username": "nomail", "email": "n@example.com", "password": PASSWORD})
    assert response.status_code == 201
    assert db.session.scalar(select(func.count()).select_from(OutboxMail)) == 0


def test_existing_accounts_start_unverified(client, login):
    user = UserFactory()
    assert client.get(ME, headers=login(user)).get_json()["email_verified"] is False


def test_resend_mails_a_new_token_and_the_older_one_stops_working(client, mail_on, login):
    user = UserFactory()
    headers = login(user)
    assert client.post(RESEND, headers=headers).status_code == 202
    first = next_token(mail_on)
    assert client.post(RESEND, headers=headers).status_code == 202
    second = next_token(mail_on)
    assert client.post(VERIFY, json={"token": first}).status_code == 422
    assert client.post(VERIFY, json={"token": second}).status_code == 204
    done = client.post(RESEND, headers=headers)
    assert done.status_code == 409 and list(done.get_json()["errors"]) == ["email"]


def test_resend_is_rate_limited_per_user(client, mail_on, login):
    user = UserFactory()
    statuses = [client.post(RESEND, headers=login(user)).status_code for _ in range(4)]
    assert statuses == [202, 202, 202, 429]
    assert client.post(RESEND, headers=login(UserFactory())).status_code == 202  # someone else


def test_resend_with_mail_off_is_503(client, login):
    response = client.post(RESEND, headers=login(UserFactory()))
    assert response.status_code == 503 and response.mimetype == "application/problem+json"


def test_changing_the_email_needs_a_fresh_login(client, mail_on, login):
    user = UserFactory()
    stale = client.patch(ME, json={"email": "new@example.com"}, headers=login(user))
    assert stale.status_code == 401
    assert stale.mimetype == "application/problem+json"
    assert "fresh" in stale.get_json()["detail"]
    # a refreshed access token is not fresh either
    refreshed = client.post(REFRESH, headers=login(user, "refresh")).get_json()["access_token"]
    assert client.patch(ME, json={"email": "new@example.com"}, headers=_bearer(refreshed)).status_code == 401
    # other edits need no fresh token
    assert client.patch(ME, json={"bio": "still me"}, headers=login(user)).status_code == 200
    assert db.session.scalar(select(func.count()).select_from(OutboxMail)) == 0


def test_a_new_email_replaces_the_old_once_verified(client, mail_on, login):
    user = UserFactory(email="old@example.com", email_verified=True)
    headers = login(user, fresh=True)
    response = client.patch(ME, json={"email": "New@example.com", "bio": "moved"}, headers=headers)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["email"], body["email_verified"], body["bio"]) == ("old@example.com", True, "moved")
    token = next_token(mail_on)
    assert mail_on.recipients == [["New@example.com"]]  # the mail goes to the new address
    assert client.post(VERIFY, json={"token": token}).status_code == 204
    me = client.get(ME, headers=headers).get_json()
    assert (me["email"], me["email_verified"]) == ("New@example.com", True)
    assert client.post(LOGIN, json={"login": "new@example.com", "password": PASSWORD}).status_code == 200


def test_an_email_taken_before_or_while_waiting_is_a_409(client, mail_on, login):
    user = UserFactory()
    UserFactory(email="taken@example.com")
    headers = login(user, fresh=True)
    taken = client.patch(ME, json={"email": "TAKEN@example.com"}, headers=headers)
    assert taken.status_code == 409 and list(taken.get_json()["errors"]) == ["email"]
    assert client.patch(ME, json={"email": "free@example.com"}, headers=headers).status_code == 200
    token = next_token(mail_on)
    UserFactory(email="Free@example.com")  # someone registers it meanwhile
    late = client.post(VERIFY, json={"token": token})
    assert late.status_code == 409 and list(late.get_json()["errors"]) == ["email"]
    db.session.expire_all()
    assert db.session.get(User, user.id).email == user.email


def test_without_mail_a_new_email_applies_at_once_unverified(client, login):
    user = UserFactory(email_verified=True)
    response = client.patch(ME, json={"email": "direct@example.com"}, headers=login(user, fresh=True))
    assert response.status_code == 200
    body = response.get_json()
    assert (body["email"], body["email_verified"]) == ("direct@example.com", False)


@pytest.mark.parametrize("email", ["not-an-address", "a" * 250 + "@x.io", ""])
def test_a_bad_email_is_a_422_naming_it(client, mail_on, login, email):
    response = client.patch(ME, json={"email": email}, headers=login(UserFactory(), fresh=True))
    assert response.status_code == 422 and "email" in response.get_json()["errors"]


def test_posting_can_require_a_verified_email(app, client, mail_on, login, monkeypatch):
    unverified, verified = UserFactory(), UserFactory(email_verified=True)
    assert client.post(POSTS, json=NEW_POST, headers=login(unverified)).status_code == 201  # off by default
    monkeypatch.setitem(app.config, "REQUIRE_VERIFIED_EMAIL_TO_POST", True)
    refused = client.post(POSTS, json=NEW_POST, headers=login(unverified))
    assert refused.status_code == 403 and refused.mimetype == "application/problem+json"
    assert client.post(POSTS, json=NEW_POST, headers=login(verified)).status_code == 201
    monkeypatch.setitem(app.config, "MAIL_URL", "")  # nothing requires a verified email without mail
    assert client.post(POSTS, json=NEW_POST, headers=login(unverified)).status_code == 201


def _login(client, username: str) -> str:
    return client.post(LOGIN, json={"login": username, "password": PASSWORD}).get_json()["access_token"]


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_the_access_token_of_a_login_is_fresh(client, mail_on):
    user = UserFactory()
    response = client.patch(ME, json={"email": "fresh@example.com"}, headers=_bearer(_login(client, user.username)))
    assert response.status_code == 200
