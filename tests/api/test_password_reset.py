"""POST /auth/password-reset and /auth/password-reset/confirm: a single-use token that
only the mail carries, the same answer for every address, sessions ended."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from app.auth import account_tokens
from app.db import db
from app.models import AccountToken, OutboxMail, TokenPurpose, User
from tests.support.factories import PASSWORD, UserFactory
from tests.support.smtp_server import deliver_outbox, token_in

RESET = "/api/v1/auth/password-reset"
CONFIRM = "/api/v1/auth/password-reset/confirm"
LOGIN = "/api/v1/auth/login"
ME = "/api/v1/users/me"
NEW_PASSWORD = "a brand new passphrase"


def outbox_count() -> int:
    return db.session.scalar(select(func.count()).select_from(OutboxMail))


def reset_token(client, mail_on, email: str) -> str:
    before = len(mail_on.messages)
    assert client.post(RESET, json={"email": email}).status_code == 202
    assert deliver_outbox() == 1
    return token_in(mail_on.wait_for(before + 1)[-1])


def test_a_reset_mail_carries_a_link_and_the_token_which_is_stored_only_hashed(app, client, mail_on, monkeypatch):
    monkeypatch.setitem(app.config, "PASSWORD_RESET_URL", "https://app.example.com/reset#{token}")
    user = UserFactory(email="Reset.Me@example.com")
    response = client.post(RESET, json={"email": "reset.me@EXAMPLE.com"})
    assert response.status_code == 202
    assert deliver_outbox() == 1
    (message,) = mail_on.wait_for(1)
    assert mail_on.recipients == [["Reset.Me@example.com"]]
    token = token_in(message)
    assert token not in response.get_data(as_text=True)
    assert f"https://app.example.com/reset#{token}" in message.get_body(preferencelist=("plain",)).get_content()
    (stored,) = db.session.scalars(select(AccountToken).where(AccountToken.user_id == user.id)).all()
    assert stored.digest == account_tokens.digest(token) and stored.purpose == "reset"
    assert token.encode() not in stored.digest
    lifetime = stored.expires_at - datetime.now(UTC)
    assert timedelta(minutes=29) < lifetime <= timedelta(minutes=30)


@pytest.mark.parametrize("who", ["unknown", "inactive", "deleted"])
def test_the_answer_is_the_same_for_an_address_without_an_active_account(client, mail_on, who):
    known = UserFactory(email="known@example.com")
    expected = client.post(RESET, json={"email": known.email})
    before = outbox_count()
    if who == "inactive":
        UserFactory(email="target@example.com", is_active=False)
    elif who == "deleted":
        UserFactory(email="target@example.com", is_active=False, deleted_at=datetime.now(UTC))
    response = client.post(RESET, json={"email": "target@example.com"})
    assert (response.status_code, response.get_json()) == (expected.status_code, expected.get_json())
    assert response.headers.get("Content-Type") == expected.headers.get("Content-Type")
    assert outbox_count() == before  # nothing mailed


def test_confirm_sets_the_password_ends_every_session_and_the_token_works_once(client, mail_on, login):
    user = UserFactory(email="r@example.com")
    old_sessions = [login(user), login(user)]
    token = reset_token(client, mail_on, "r@example.com")
    assert client.post(CONFIRM, json={"token": token, "new_password": NEW_PASSWORD}).status_code == 204
    for headers in old_sessions:
        assert client.get(ME, headers=headers).status_code == 401
    assert client.post(LOGIN, json={"login": user.username, "password": PASSWORD}).status_code == 401
    assert client.post(LOGIN, json={"login": user.username, "password": NEW_PASSWORD}).status_code == 200
    again = client.post(CONFIRM, json={"token": token, "new_password": "yet another passphrase"})
    assert again.status_code == 422
    assert again.mimetype == "application/problem+json"
    assert list(again.get_json()["errors"]) == ["token"]


def test_an_expired_unknown_or_superseded_token_is_a_422_naming_token(client, mail_on):
    user = UserFactory(email="x@example.com")
    first = reset_token(client, mail_on, user.email)
    second = reset_token(client, mail_on, user.email)  # the newer mail's token is the one that works
    db.session.execute(
        update(AccountToken)
        .where(AccountToken.digest == account_tokens.digest(second))
        .values(expires_at=datetime.now(UTC) - timedelta(minutes=31))
    )
    db.session.commit()
    hash_before = db.session.get(User, user.id).password_hash
    for token in (first, second, "not-a-token-we-made"):
        response = client.post(CONFIRM, json={"token": token, "new_password": NEW_PASSWORD})
        assert response.status_code == 422, token
        assert list(response.get_json()["errors"]) == ["token"]
    db.session.expire_all()
    assert db.session.get(User, user.id).password_hash == hash_before


def test_a_verification_token_does_not_reset_a_password(client, mail_on):
    user = UserFactory()
    token = account_tokens.issue(user.id, TokenPurpose.VERIFY, timedelta(hours=1), new_email=user.email)
    db.session.commit()
    response = client.post(CONFIRM, json={"token": token, "new_password": NEW_PASSWORD})
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"token": "t", "new_password": "short"}, "new_password"),
        ({"token": "t", "new_password": "password123"}, "new_password"),  # too common
        ({"token": "", "new_password": NEW_PASSWORD}, "token"),
        ({"token": "t" * 101, "new_password": NEW_PASSWORD}, "token"),
        ({"new_password": NEW_PASSWORD}, "token"),
    ],
)
def test_confirm_validates_its_body(client, mail_on, body, field):
    response = client.post(CONFIRM, json=body)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]


@pytest.mark.parametrize("body", [{"email": "not an address"}, {"email": "a@b.c", "extra": 1}, {}])
def test_request_validates_its_body_and_writes_nothing(client, mail_on, body):
    response = client.post(RESET, json=body)
    assert response.status_code == 422
    assert outbox_count() == 0


def test_requests_are_limited_per_address_in_any_case(client, mail_on):
    UserFactory(email="limited@example.com")
    for email in ("limited@example.com", "LIMITED@example.com", "Limited@Example.com"):
        assert client.post(RESET, json={"email": email}).status_code == 202
    limited = client.post(RESET, json={"email": "limited@EXAMPLE.COM"})
    assert limited.status_code == 429
    assert limited.mimetype == "application/problem+json"
    assert client.post(RESET, json={"email": "other@example.com"}).status_code == 202  # another address


def test_requests_are_limited_per_client(app, client, mail_on, monkeypatch):
    monkeypatch.setitem(app.config, "RATELIMIT_PASSWORD_RESET_PER_IP", "3 per hour")
    for n in range(3):
        assert client.post(RESET, json={"email": f"n{n}@example.com"}).status_code == 202
    assert client.post(RESET, json={"email": "n4@example.com"}).status_code == 429


def test_the_per_address_limit_keeps_no_address_in_redis(client, mail_on, redis_client):
    client.post(RESET, json={"email": "Private.Person@example.com"})
    assert not [k for k in redis_client.keys("*") if b"private" in k.lower()]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (RESET, {"email": "a@example.com"}),
        (CONFIRM, {"token": "t", "new_password": NEW_PASSWORD}),
        ("/api/v1/auth/verify-email", {"token": "t"}),
    ],
)
def test_with_mail_off_the_endpoints_answer_503(client, path, body):
    response = client.post(path, json=body)
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert "Mail is not configured" in response.get_json()["detail"]
    assert outbox_count() == 0
