"""What the app's overrides of library internals rely on, each library pinned exactly in
setup.cfg: flask-jwt-extended's `_decode_jwt_from_config` and the module global
`view_decorators.get_unverified_jwt_headers` (app/jwt_manager.py), and flask-smorest's
`_register_responses` (app/api.py). A new version that changes any of them fails here
before it reaches a request."""

from __future__ import annotations

import inspect
import time
from datetime import timedelta

import jwt as pyjwt
import pytest
from flask_jwt_extended import JWTManager

from app.jwt_manager import RememberingJWTManager
from tests.support.factories import UserFactory
from tests.support.sessions import open_session

# -- flask-jwt-extended: RememberingJWTManager._decode_jwt_from_config ----------------


def test_flask_jwt_extended_decodes_through_the_method_the_manager_overrides():
    parameters = inspect.signature(JWTManager._decode_jwt_from_config).parameters
    assert [(p.name, p.default) for p in parameters.values()] == [
        ("self", inspect.Parameter.empty),
        ("encoded_token", inspect.Parameter.empty),
        ("csrf_value", None),
        ("allow_expired", False),
    ]
    assert "_decode_jwt_from_config" in vars(RememberingJWTManager)


@pytest.fixture
def decodes(monkeypatch):
    """Counts of the manager's decodes (every token a request sends) and of
    flask-jwt-extended's own (the token verified by PyJWT)."""
    counts = {"asked": 0, "verified": 0}
    ours, theirs = RememberingJWTManager._decode_jwt_from_config, JWTManager._decode_jwt_from_config

    def asked(self, *args, **kwargs):
        counts["asked"] += 1
        return ours(self, *args, **kwargs)

    def verified(self, *args, **kwargs):
        counts["verified"] += 1
        return theirs(self, *args, **kwargs)

    monkeypatch.setattr(RememberingJWTManager, "_decode_jwt_from_config", asked)
    monkeypatch.setattr(JWTManager, "_decode_jwt_from_config", verified)
    return counts


def _me(client, token: str):
    return client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})


def test_a_token_is_verified_once_per_process_and_sent_through_the_manager_each_time(client, decodes):
    token = open_session(UserFactory())["access_token"]
    for _ in range(3):
        assert _me(client, token).status_code == 200
    assert decodes == {"asked": 3, "verified": 1}


def test_a_remembered_token_is_refused_once_it_expires(app, client, monkeypatch, decodes):
    monkeypatch.setitem(app.config, "JWT_ACCESS_TOKEN_EXPIRES", timedelta(seconds=2))
    token = open_session(UserFactory())["access_token"]
    assert _me(client, token).status_code == 200
    assert _me(client, token).status_code == 200
    assert decodes["verified"] == 1  # remembered
    expires = pyjwt.decode(token, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    refused = _me(client, token)
    assert refused.status_code == 401
    assert refused.get_json()["detail"] == "The token has expired."


def test_a_remembered_token_is_refused_once_revoked(client, decodes):
    token = open_session(UserFactory())["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert _me(client, token).status_code == 200
    assert client.post("/api/v1/auth/logout", headers=headers).status_code == 204
    refused = _me(client, token)
    assert refused.status_code == 401
    assert refused.get_json()["detail"] == "The token has been revoked."
    assert decodes["verified"] == 1  # refused although remembered


def _flip_last(part: str) -> str:
    return part[:-1] + ("A" if part[-1] != "A" else "B")


def test_a_tampered_copy_of_a_remembered_token_is_refused(app, client):
    token = open_session(UserFactory())["access_token"]
    assert _me(client, token).status_code == 200  # remembered
    header, payload, signature = token.split(".")
    claims = pyjwt.decode(token, options={"verify_signature": False})
    forged_payload = pyjwt.encode({**claims, "role": "admin"}, "k" * 32, algorithm="HS256").split(".")[1]
    for forged in (
        f"{header}.{payload}.{_flip_last(signature)}",  # another signature
        f"{header}.{forged_payload}.{signature}",  # other claims under the remembered signature
        f"{header}.{payload}.",  # none
    ):
        refused = _me(client, forged)
        assert refused.status_code == 401, forged
        assert refused.get_json()["detail"].startswith("The token is invalid"), refused.get_json()


# -- flask-jwt-extended: view_decorators.get_unverified_jwt_headers ---------------------


def test_flask_jwt_extended_reads_the_header_through_the_global_the_manager_replaces(app):
    from flask_jwt_extended import view_decorators

    from app.jwt_manager import remembered_header

    source = inspect.getsource(view_decorators._decode_jwt_from_request)
    assert "jwt_header = get_unverified_jwt_headers(encoded_token)" in source
    assert view_decorators.get_unverified_jwt_headers is remembered_header


def test_a_remembered_token_s_header_is_read_once_and_is_pyjwt_s(client, monkeypatch):
    from flask_jwt_extended import view_decorators

    import app.jwt_manager

    reads, headers_seen = [], []
    original = app.jwt_manager._read_header
    monkeypatch.setattr(app.jwt_manager, "_read_header", lambda token: reads.append(token) or original(token))
    fjwt_callback = view_decorators.verify_token_not_blocklisted

    def seen(header, payload):
        headers_seen.append(header)
        return fjwt_callback(header, payload)

    monkeypatch.setattr(view_decorators, "verify_token_not_blocklisted", seen)
    token = open_session(UserFactory())["access_token"]
    for _ in range(3):
        assert _me(client, token).status_code == 200
    assert reads == [token]  # once, when the token verified
    assert headers_seen == [pyjwt.get_unverified_header(token)] * 3


# -- flask-smorest: ProblemApi._register_responses --------------------------------------

PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
HTML = {"text/html": {"schema": {"type": "string"}}}


def test_every_documented_error_is_problem_json_but_those_gunicorn_answers(client):
    """flask-smorest registers its error responses (as application/json) in
    `_register_responses`, which ProblemApi replaces; each operation names them."""
    spec = client.get("/openapi.json").get_json()
    components = spec["components"]["responses"]
    errors = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            assert "default" not in operation["responses"], (method, path)
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    errors[(method, path, int(status))] = response
    assert {status for *_, status in errors} >= {400, 401, 404, 409, 412, 413, 414, 415, 422, 431, 503}
    for (method, path, status), response in errors.items():
        name = response["$ref"].removeprefix("#/components/responses/")
        content = components[name]["content"]
        assert content == (HTML if status in (414, 431) else PROBLEM), (method, path, status, content)
