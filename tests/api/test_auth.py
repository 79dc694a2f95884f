"""POST /auth/register, /auth/login, /auth/refresh and every way a token can be bad."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, timedelta

import jwt as pyjwt
import pytest
from argon2 import PasswordHasher
from flask_jwt_extended import create_access_token
from sqlalchemy import func, select

from app.db import db
from app.models import User
from tests.support.factories import PASSWORD, UserFactory

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
ME = "/api/v1/users/me"


def user_count() -> int:
    return db.session.scalar(select(func.count()).select_from(User))


def test_register_creates_user_and_returns_public_profile(client):
    response = client.post(REGISTER, json={"username": "alice", "email": "Alice@Example.com", "password": PASSWORD})
    assert response.status_code == 201
    body = response.get_json()
    assert response.headers["Location"] == f"/api/v1/users/{body['id']}"
    assert body["username"] == "alice"
    assert body["display_name"] == "alice"
    assert body["post_count"] == 0
    assert "email" not in body and "password" not in body and "password_hash" not in body
    stored = db.session.get(User, body["id"])
    assert stored.password_hash.startswith("$argon2id$")
    assert PASSWORD not in stored.password_hash


@pytest.mark.parametrize(
    ("username", "email", "field"),
    [("ALICE", "other@example.com", "username"), ("bob", "alice@EXAMPLE.com", "email")],
)
def test_register_conflict_is_case_insensitive_and_names_the_field(client, username, email, field):
    UserFactory(username="alice", email="alice@example.com")
    before = user_count()
    response = client.post(REGISTER, json={"username": username, "email": email, "password": PASSWORD})
    assert response.status_code == 409
    assert response.mimetype == "application/problem+json"
    assert list(response.get_json()["errors"]) == [field]
    assert user_count() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": "ab", "email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": "a" * 31, "email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": "no spaces", "email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": "alice", "email": "not-an-email", "password": PASSWORD}, "email"),
        ({"username": "alice", "email": "a@example.com", "password": "short"}, "password"),
        ({"username": "alice", "email": "a@example.com", "password": "x" * 129}, "password"),
        ({"username": "alice", "email": "a@example.com", "password": PASSWORD, "role": "admin"}, "role"),
        ({"username": 7, "email": "a@example.com", "password": PASSWORD}, "username"),
    ],
)
def test_register_validation_names_the_field_and_writes_nothing(client, body, field):
    before = user_count()
    response = client.post(REGISTER, json=body)
    assert response.status_code == 422
    problem = response.get_json()
    assert problem["status"] == 422
    assert field in problem["errors"]
    assert user_count() == before


def test_register_rejects_malformed_json_with_400(client):
    response = client.post(REGISTER, data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"


def test_register_rejects_a_json_array_body(client):
    response = client.post(REGISTER, json=["alice"])
    assert response.status_code == 422


def test_body_over_the_size_limit_gets_413(client, app):
    huge = "x" * (app.config["MAX_CONTENT_LENGTH"] + 1)
    response = client.post(REGISTER, data=huge, content_type="application/json")
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"


@pytest.mark.parametrize("login_field", ["carol", "CAROL", "carol@example.com", "Carol@Example.COM"])
def test_login_by_username_or_email_case_insensitively(client, login_field):
    UserFactory(username="carol", email="carol@example.com")
    response = client.post(LOGIN, json={"login": login_field, "password": PASSWORD})
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 15 * 60
    me = client.get(ME, headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.get_json()["username"] == "carol"


@pytest.mark.parametrize(
    "body", [{"login": "carol", "password": "wrong password!"}, {"login": "nobody", "password": PASSWORD}]
)
def test_login_failure_is_401_and_does_not_say_which_part_was_wrong(client, body):
    UserFactory(username="carol")
    response = client.post(LOGIN, json=body)
    assert response.status_code == 401
    assert response.get_json()["detail"] == "Wrong login or password."


@pytest.fixture
def argon2_runs(monkeypatch):
    """The cost (time, memory, parallelism) of each argon2 hash or verify this process
    runs, recorded at argon2-cffi's binding to the C library, whichever call led there."""
    from argon2 import extract_parameters, low_level

    runs = []
    real = low_level.lib

    class Recording:
        def __getattr__(self, name):
            return getattr(real, name)

        def argon2_hash(self, time_cost, memory_cost, parallelism, *args):
            runs.append((time_cost, memory_cost, parallelism))
            return real.argon2_hash(time_cost, memory_cost, parallelism, *args)

        def argon2_verify(self, encoded, *args):
            params = extract_parameters(low_level.ffi.string(encoded).decode())
            runs.append((params.time_cost, params.memory_cost, params.parallelism))
            return real.argon2_verify(encoded, *args)

    monkeypatch.setattr(low_level, "lib", Recording())
    return runs


@pytest.mark.parametrize(
    "body",
    [
        {"login": "carol", "password": "wrong password!"},
        {"login": "nobody", "password": "wrong password!"},
        {"login": "nobody@example.com", "password": PASSWORD},
    ],
)
def test_a_failed_login_costs_one_hash_whether_or_not_the_login_exists(client, app, argon2_runs, body):
    """An unknown login runs the same argon2 work as a wrong password (one computation
    at the configured cost), so the time of the answer does not tell which names exist."""
    UserFactory(username="carol")  # its hash has the test profile's cost, as configured
    configured = tuple(app.config[f"ARGON2_{name}"] for name in ("TIME_COST", "MEMORY_COST", "PARALLELISM"))
    assert client.post(LOGIN, json=body).status_code == 401
    assert argon2_runs == [configured]


PASSWORD_MIN, PASSWORD_MAX = 10, 128


@pytest.mark.parametrize(
    ("length", "accepted"),
    [(PASSWORD_MIN - 1, False), (PASSWORD_MIN, True), (PASSWORD_MAX, True), (PASSWORD_MAX + 1, False)],
)
def test_password_length_limits_hold_exactly_on_register_and_on_change(client, login, length, accepted):
    password = ("kq7-vz" * 30)[:length]  # on no list of common passwords
    registered = client.post(REGISTER, json={"username": "limits", "email": "l@example.com", "password": password})
    user = UserFactory()
    changed = client.post(
        "/api/v1/auth/password", json={"current_password": PASSWORD, "new_password": password}, headers=login(user)
    )
    if accepted:
        assert (registered.status_code, changed.status_code) == (201, 204)
        for name in ("limits", user.username):
            assert client.post(LOGIN, json={"login": name, "password": password}).status_code == 200
    else:
        assert (registered.status_code, changed.status_code) == (422, 422)
        assert list(registered.get_json()["errors"]) == ["password"]
        assert list(changed.get_json()["errors"]) == ["new_password"]
        assert user_count() == 1  # only the factory's
        assert client.post(LOGIN, json={"login": user.username, "password": PASSWORD}).status_code == 200


def test_inactive_user_cannot_log_in_and_their_tokens_stop_working(client, login):
    user = UserFactory(username="dave")
    headers = login(user)
    user.is_active = False
    db.session.flush()
    assert client.post(LOGIN, json={"login": "dave", "password": PASSWORD}).status_code == 401
    assert client.get(ME, headers=headers).status_code == 401


def test_login_validation(client):
    response = client.post(LOGIN, json={"login": "", "password": PASSWORD, "extra": 1})
    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == {"login", "extra"}


def test_login_upgrades_a_hash_made_with_older_parameters(client):
    old_hash = PasswordHasher(time_cost=2, memory_cost=16, parallelism=2).hash(PASSWORD)
    user = UserFactory(username="erin", password_hash=old_hash)
    assert client.post(LOGIN, json={"login": "erin", "password": PASSWORD}).status_code == 200
    db.session.refresh(user)
    assert user.password_hash != old_hash
    assert "m=8,t=1,p=1" in user.password_hash


def test_refresh_token_gives_a_new_pair(client, login):
    user = UserFactory()
    response = client.post(REFRESH, headers=login(user, "refresh"))
    assert response.status_code == 200
    pair = response.get_json()
    assert client.get(ME, headers={"Authorization": f"Bearer {pair['access_token']}"}).status_code == 200


def test_access_token_is_refused_for_refresh_and_refresh_for_access(client, login):
    user = UserFactory()
    assert client.post(REFRESH, headers=login(user, "access")).status_code == 401
    assert client.get(ME, headers=login(user, "refresh")).status_code == 401


def _forged(app, payload: dict, alg: str, key: str) -> str:
    return pyjwt.encode(payload, key, algorithm=alg)


def _claims(user_id: int, **extra) -> dict:
    """Every claim issue_tokens gives an access token: a refusal is for the case's reason."""
    from datetime import datetime

    now = datetime.now(UTC)
    return {
        "sub": str(user_id),
        "type": "access",
        "jti": "x",
        "role": "user",
        "sid": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(minutes=5),
        "fresh": False,
        **extra,
    }


def _issued_shape(**extra) -> dict:
    """The claims issue_tokens adds to those of create_access_token."""
    return {"additional_claims": {"role": "user", "sid": str(uuid.uuid4())}, **extra}


def test_bad_tokens_are_all_401_problems(client, app):
    user = UserFactory()
    secret = app.config["JWT_SECRET_KEY"]
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    unsigned = {**_claims(user.id), "iat": 1700000000, "nbf": 1700000000, "exp": 4102444800}
    payload = base64.urlsafe_b64encode(json.dumps(unsigned).encode()).rstrip(b"=").decode()
    with app.app_context():
        expired = create_access_token(identity=str(user.id), **_issued_shape(expires_delta=timedelta(seconds=-1)))
    tokens = {
        "wrong signature": _forged(app, _claims(user.id), "HS256", "another-secret-key-of-enough-length!"),
        "alg none": f"{header}.{payload}.",
        "other algorithm": _forged(app, _claims(user.id), "HS512", secret),
        "expired": expired,
        "garbage": "not.a.token",
        "unknown user": _forged(app, _claims(10**12), "HS256", secret),
        "non-numeric sub": _forged(app, _claims(0, sub="abc"), "HS256", secret),
        "sub beyond bigint": _forged(app, _claims(0, sub="9" * 30), "HS256", secret),
        "integer sub": _forged(app, _claims(0, sub=user.id), "HS256", secret),
    }
    for reason, token in tokens.items():
        response = client.get(ME, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, reason
        assert response.mimetype == "application/problem+json", reason
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), reason
    assert client.get(ME).status_code == 401
    assert client.get(ME, headers={"Authorization": "Basic abc"}).status_code == 401


def test_a_verified_token_is_remembered_until_it_expires(client, app, monkeypatch, login):
    """A process verifies a token once; later requests check only its expiry. A token
    that differs in any byte is verified on its own, and an expired one is refused."""
    import time

    user = UserFactory()
    decodes = []
    real_decode = pyjwt.decode
    monkeypatch.setattr(pyjwt, "decode", lambda *a, **k: decodes.append(1) or real_decode(*a, **k))
    headers = login(user)
    assert [client.get(ME, headers=headers).status_code for _ in range(3)] == [200, 200, 200]
    assert len(decodes) == 2  # the first request's unverified and verified decodes; none after
    token = headers["Authorization"].removeprefix("Bearer ")
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert client.get(ME, headers={"Authorization": f"Bearer {tampered}"}).status_code == 401
    with app.app_context():
        # `exp` is in whole seconds, cut down: two seconds from now leave it at least one
        short = create_access_token(identity=str(user.id), **_issued_shape(expires_delta=timedelta(seconds=2)))
    expires = pyjwt.decode(short, options={"verify_signature": False})["exp"]
    assert client.get(ME, headers={"Authorization": f"Bearer {short}"}).status_code == 200
    time.sleep(max(0.0, expires - time.time()) + 0.05)  # until the token's own exp has passed
    response = client.get(ME, headers={"Authorization": f"Bearer {short}"})
    assert response.status_code == 401
    assert "expired" in response.get_json()["detail"]


def test_token_carries_the_claims_the_design_names(client, app):
    UserFactory(username="frank")
    pair = client.post(LOGIN, json={"login": "frank", "password": PASSWORD}).get_json()
    claims = pyjwt.decode(pair["access_token"], app.config["JWT_SECRET_KEY"], algorithms=["HS256"])
    assert isinstance(claims["sub"], str)
    assert {"jti", "type", "role", "exp"} <= set(claims)
    assert claims["type"] == "access" and claims["role"] == "user"
