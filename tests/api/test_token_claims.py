"""A token signed with the app's own key but missing a claim that issue_tokens gives it
(or holding one the services cannot read) is a 401 problem on every kind of route: one
that loads the caller, the feed, logout, the session list, a write, and refresh.

Each bad token is a real issued token's claims, re-signed with JWT_SECRET_KEY after one
change, and the unchanged claims re-signed the same way are shown to work first.
"""

from __future__ import annotations

import jwt as pyjwt
import pytest

from tests.support.factories import UserFactory
from tests.support.sessions import open_session

ACCESS_ROUTES = [
    ("GET", "/api/v1/users/me", None, 200),
    ("GET", "/api/v1/feed", None, 200),
    ("GET", "/api/v1/auth/sessions", None, 200),
    ("POST", "/api/v1/posts", {"title": "Hi", "body": "there"}, 201),
    ("POST", "/api/v1/auth/logout", None, 204),
    ("POST", "/api/v1/auth/logout-all", None, 204),
]
REFRESH_ROUTE = ("POST", "/api/v1/auth/refresh", None, 200)
ACCESS_CLAIMS = ["sub", "jti", "type", "exp", "role", "sid"]
REFRESH_CLAIMS = ["sub", "jti", "type", "exp", "sid"]


def _claims_of(app, token: str) -> dict:
    return pyjwt.decode(token, app.config["JWT_SECRET_KEY"], algorithms=["HS256"])


def _signed(app, claims: dict) -> str:
    return pyjwt.encode(claims, app.config["JWT_SECRET_KEY"], algorithm="HS256")


def _call(client, route, token: str):
    method, path, body, _ok = route
    return client.open(path, method=method, json=body, headers={"Authorization": f"Bearer {token}"})


def _assert_refused(response, why: str) -> None:
    assert response.status_code == 401, (why, response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/problem+json", why
    assert response.headers["WWW-Authenticate"].startswith("Bearer"), why
    assert why in response.get_json()["detail"], response.get_json()


@pytest.mark.parametrize("route", [*ACCESS_ROUTES, REFRESH_ROUTE], ids=lambda r: f"{r[0]} {r[1]}")
def test_the_issued_claims_re_signed_are_accepted(client, app, route):
    """The control: re-signing alone changes nothing, so a refusal below is the claim's."""
    tokens = open_session(UserFactory())
    kind = "refresh_token" if route is REFRESH_ROUTE else "access_token"
    response = _call(client, route, _signed(app, _claims_of(app, tokens[kind])))
    assert response.status_code == route[3], response.get_data(as_text=True)


@pytest.mark.parametrize("claim", ACCESS_CLAIMS)
@pytest.mark.parametrize("route", ACCESS_ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_an_access_token_missing_a_claim_is_a_401(client, app, route, claim):
    claims = _claims_of(app, open_session(UserFactory())["access_token"])
    del claims[claim]
    _assert_refused(_call(client, route, _signed(app, claims)), f'"{claim}"')


@pytest.mark.parametrize("claim", REFRESH_CLAIMS)
def test_a_refresh_token_missing_a_claim_is_a_401(client, app, claim):
    claims = _claims_of(app, open_session(UserFactory())["refresh_token"])
    del claims[claim]
    _assert_refused(_call(client, REFRESH_ROUTE, _signed(app, claims)), f'"{claim}"')


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"sid": "not-a-session-id"}, "sid"),
        ({"sid": 12}, "not a string"),
        ({"jti": 12}, "not a string"),
        ({"role": ["admin"]}, "not a string"),
        ({"type": "id"}, "type"),
        ({"jti": None}, '"jti"'),
    ],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("route", ACCESS_ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_an_access_token_with_an_unreadable_claim_is_a_401(client, app, route, change, why):
    claims = _claims_of(app, open_session(UserFactory())["access_token"]) | change
    _assert_refused(_call(client, route, _signed(app, claims)), why)


def test_a_refresh_token_with_an_unreadable_sid_is_a_401(client, app):
    claims = _claims_of(app, open_session(UserFactory())["refresh_token"]) | {"sid": "not-a-session-id"}
    _assert_refused(_call(client, REFRESH_ROUTE, _signed(app, claims)), "sid")
