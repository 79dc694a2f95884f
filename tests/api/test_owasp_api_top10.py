"""One or more tests per OWASP API Security Top 10 (2023) item that applies here.

API7 (server-side request forgery) and API10 (unsafe consumption of APIs) do not apply:
the service fetches no URL a client names and consumes no third-party API. The test
for API9 keeps it that way: the OpenAPI document must list exactly the routes served.
"""

from __future__ import annotations

import re

import pytest

from app.db import db
from app.factory import create_app
from app.models import Post, User
from tests.support.factories import (
    PASSWORD,
    PUBLIC_PROFILE_FIELDS,
    AdminFactory,
    FollowFactory,
    PostFactory,
    UserFactory,
)
from tests.support.redis_server import RedisServer
from tests.support.sessions import open_session

API = "/api/v1"


def bearer(tokens: dict, kind: str = "access") -> dict:
    return {"Authorization": f"Bearer {tokens[f'{kind}_token']}"}


# -- API1:2023 Broken Object Level Authorization ----------------------------------------


def test_api1_bola_a_user_cannot_edit_or_delete_another_users_post(client, login):
    post = PostFactory(title="original", body="original body")
    intruder = login(UserFactory())
    assert client.patch(f"{API}/posts/{post.id}", json={"title": "pwned"}, headers=intruder).status_code == 403
    assert client.delete(f"{API}/posts/{post.id}", headers=intruder).status_code == 403
    db.session.expire_all()
    stored = db.session.get(Post, post.id)
    assert (stored.title, stored.body, stored.version) == ("original", "original body", 1)


def test_api1_bola_a_user_cannot_end_or_see_another_users_sessions(client):
    victim, attacker = UserFactory(), UserFactory()
    victim_tokens = open_session(victim)
    attacker_tokens = open_session(attacker)
    from flask_jwt_extended import decode_token

    victim_sid = decode_token(victim_tokens["access_token"])["sid"]
    assert client.delete(f"{API}/auth/sessions/{victim_sid}", headers=bearer(attacker_tokens)).status_code == 404
    listed = client.get(f"{API}/auth/sessions", headers=bearer(attacker_tokens)).get_json()["items"]
    assert victim_sid not in {s["id"] for s in listed}
    assert client.get(f"{API}/users/me", headers=bearer(victim_tokens)).status_code == 200


def test_api1_bola_me_is_always_the_tokens_owner(client):
    alice, bob = UserFactory(), UserFactory()
    for user in (bob, alice):
        me = client.get(f"{API}/users/me", headers=bearer(open_session(user))).get_json()
        assert (me["id"], me["email"]) == (user.id, user.email)


# -- API2:2023 Broken Authentication ----------------------------------------------------


def test_api2_broken_authentication_login_is_rate_limited_per_account_and_address(client):
    UserFactory(username="target")
    wrong = {"login": "target", "password": "not the password"}
    statuses = [client.post(f"{API}/auth/login", json=wrong).status_code for _ in range(5)]
    assert statuses == [401] * 5
    blocked = client.post(f"{API}/auth/login", json={"login": "TARGET", "password": PASSWORD})
    assert blocked.status_code == 429
    assert blocked.mimetype == "application/problem+json"
    assert int(blocked.headers["Retry-After"]) > 0


def login_from(client, address: str, login: str, password: str):
    return client.post(
        f"{API}/auth/login", json={"login": login, "password": password}, environ_base={"REMOTE_ADDR": address}
    )


def test_api2_guesses_from_one_address_do_not_lock_the_owner_out_from_another(client):
    UserFactory(username="owner")
    guesses = [login_from(client, "198.51.100.7", "owner", f"guess {i}").status_code for i in range(6)]
    assert guesses == [401] * 5 + [429]
    assert login_from(client, "203.0.113.9", "owner", PASSWORD).status_code == 200
    assert login_from(client, "198.51.100.7", "owner", PASSWORD).status_code == 429  # that address still waits


def test_api2_a_username_and_its_email_are_one_account_for_the_login_limit(client):
    UserFactory(username="dual", email="Dual@Example.com")
    guesses = [login_from(client, "198.51.100.8", "dual", f"guess {i}").status_code for i in range(5)]
    assert guesses == [401] * 5
    assert login_from(client, "198.51.100.8", "DUAL@example.com", "guess 5").status_code == 429
    assert login_from(client, "198.51.100.8", "dual@example.com", PASSWORD).status_code == 429


def test_api2_guesses_spread_over_many_addresses_reach_the_per_account_ceiling(client, app):
    assert app.config["RATELIMIT_LOGIN_PER_ACCOUNT"] == "50 per hour"
    UserFactory(username="popular", email="popular@example.com")
    spread = [
        login_from(client, f"192.0.2.{address}", "popular" if guess % 2 else "popular@example.com", "nope").status_code
        for address in range(10)
        for guess in range(5)
    ]
    assert spread == [401] * 50
    refused = login_from(client, "192.0.2.100", "popular", "nope")
    assert refused.status_code == 429
    assert refused.mimetype == "application/problem+json"
    assert "from all addresses together" in refused.get_json()["detail"]
    assert int(refused.headers["Retry-After"]) > 60  # the hour's window, not a minute's
    # the owner too, from an address of their own, until the window ends
    assert login_from(client, "203.0.113.10", "popular", PASSWORD).status_code == 429


def test_api2_login_limits_do_not_tell_whether_an_account_exists(client):
    UserFactory(username="someone")

    def answers(login: str, address: str) -> list:
        seen = []
        for i in range(7):
            response = login_from(client, address, login, f"guess {i}")
            seen.append(
                (
                    response.status_code,
                    response.get_json()["detail"],
                    sorted(name for name, _ in response.headers if name.lower().startswith(("x-ratelimit", "retry"))),
                    response.headers.get("X-RateLimit-Limit"),
                    response.headers.get("X-RateLimit-Remaining"),
                )
            )
        return seen

    existing, unknown = answers("someone", "192.0.2.50"), answers("no-one-by-this-name", "192.0.2.51")
    assert [status for status, *_ in existing] == [401] * 5 + [429] * 2
    assert existing == unknown


def test_api2_broken_authentication_login_is_rate_limited_per_address(client, app, monkeypatch):
    monkeypatch.setitem(app.config, "RATELIMIT_LOGIN_PER_IP", "4 per minute")
    statuses = [
        client.post(f"{API}/auth/login", json={"login": f"nobody{i}", "password": "x"}).status_code for i in range(5)
    ]
    assert statuses == [401, 401, 401, 401, 429]


def _refresh_until_refused(client, tokens: dict) -> list[int]:
    """Refresh with each new refresh token until the API refuses; the statuses."""
    statuses = []
    while not statuses or statuses[-1] == 200:
        assert len(statuses) <= 20, "never limited"
        response = client.post(f"{API}/auth/refresh", headers=bearer(tokens, "refresh"))
        statuses.append(response.status_code)
        if response.status_code == 200:
            tokens = response.get_json()
    return statuses


def test_api2_broken_authentication_refresh_is_rate_limited_per_session(client, app, monkeypatch):
    """Each session of a user has its own allowance: a phone that refreshes too often is
    limited, and the same user's laptop still gets all of its refreshes."""
    monkeypatch.setitem(app.config, "RATELIMIT_REFRESH_PER_SESSION", "3 per minute")
    user = UserFactory()
    phone, laptop = open_session(user), open_session(user)
    assert _refresh_until_refused(client, phone) == [200, 200, 200, 429]
    assert _refresh_until_refused(client, laptop) == [200, 200, 200, 429]


def test_api2_broken_authentication_password_change_is_rate_limited(client):
    tokens = open_session(UserFactory())
    body = {"current_password": "guess number x", "new_password": "a brand new passphrase"}
    assert [client.post(f"{API}/auth/password", json=body, headers=bearer(tokens)).status_code for _ in range(5)] == [
        422
    ] * 5
    assert client.post(f"{API}/auth/password", json=body, headers=bearer(tokens)).status_code == 429


@pytest.mark.system  # starts and stops a Redis server of its own
def test_api2_broken_authentication_limits_fall_back_to_memory_when_redis_is_down(app, test_db_url):
    server = RedisServer().start()
    try:
        limited = create_app(
            {
                "APP_ENV": "test",
                "SQLALCHEMY_DATABASE_URI": test_db_url.render_as_string(False),
                "REDIS_URL": server.url,
                "RATELIMIT_LOGIN_PER_ACCOUNT_IP": "3 per minute",
            }
        )
        client = limited.test_client()
        server.stop()
        statuses = [
            client.post(f"{API}/auth/login", json={"login": "ghost", "password": "x"}).status_code for _ in range(4)
        ]
        assert statuses == [401, 401, 401, 429]
    finally:
        server.cleanup()


# -- API3:2023 Broken Object Property Level Authorization -------------------------------


def test_api3_bopla_mass_assignment_of_role_is_refused_and_nothing_changes(client, login):
    user = UserFactory()
    response = client.patch(f"{API}/users/me", json={"display_name": "X", "role": "admin"}, headers=login(user))
    assert response.status_code == 422
    assert "role" in response.get_json()["errors"]
    db.session.expire_all()
    stored = db.session.get(User, user.id)
    assert (stored.role, stored.display_name) == ("user", user.display_name)


# what a public view may show: of a user, of a post, of a post's author, of a user's newest posts
PUBLIC_POST_FIELDS = {"id", "title", "body", "author", "created_at", "updated_at"}
AUTHOR_FIELDS = {"id", "username", "display_name"}
POST_BRIEF_FIELDS = {"id", "title", "created_at"}


def test_api3_bopla_no_private_property_leaks_from_public_views(client, login):
    """Every view of a user anyone may read holds the public fields and nothing else,
    read cold (from PostgreSQL) and warm (from the cache), on lists that are not empty."""
    author, fan, followed = UserFactory(), UserFactory(), UserFactory()
    FollowFactory(follower_id=fan.id, followed_id=author.id)
    FollowFactory(follower_id=author.id, followed_id=followed.id)
    post = PostFactory(author=author)
    fan_headers = login(fan)

    def get(path: str, headers=None):
        response = client.get(f"{API}{path}", headers=headers or {})
        assert response.status_code == 200, path
        return response.get_json()

    texts = []
    for _ in range(2):  # cold, then warm
        followers = get(f"/users/{author.id}/followers")["items"]
        following = get(f"/users/{author.id}/following")["items"]
        assert [u["id"] for u in followers] == [fan.id]
        assert [u["id"] for u in following] == [followed.id]
        listed = get("/users")["items"]
        found = get(f"/users?q={author.username}")["items"]
        with_posts = get("/users?include=posts")["items"]
        assert {u["id"] for u in listed} == {u["id"] for u in with_posts} == {author.id, fan.id, followed.id}
        assert [u["id"] for u in found] == [author.id]
        for user in with_posts:
            assert set(user) == PUBLIC_PROFILE_FIELDS | {"posts"}
        briefs = next(u for u in with_posts if u["id"] == author.id)["posts"]
        assert [b["id"] for b in briefs] == [post.id]
        assert all(set(brief) == POST_BRIEF_FIELDS for brief in briefs)
        profiles = [get(f"/users/{author.id}"), *followers, *following, *listed, *found]
        for profile in profiles:
            assert set(profile) == PUBLIC_PROFILE_FIELDS
        posts = [
            get(f"/posts/{post.id}"),
            *get("/posts")["items"],
            *get(f"/posts?author={author.id}")["items"],
            *get("/posts?q=postgres")["items"],
            *get(f"/users/{author.id}/posts")["items"],
            *get("/feed", fan_headers)["items"],
        ]
        assert [p["id"] for p in posts] == [post.id] * 6
        for shown in posts:
            assert set(shown) == PUBLIC_POST_FIELDS
            assert set(shown["author"]) == AUTHOR_FIELDS
        texts.append(str([profiles, with_posts, posts]))
    registered = client.post(
        f"{API}/auth/register", json={"username": "newcomer", "email": "new@example.com", "password": PASSWORD}
    )
    assert registered.status_code == 201
    assert set(registered.get_json()) == PUBLIC_PROFILE_FIELDS
    texts.append(registered.get_data(as_text=True))
    for secret in ("@example.com", "password", "role", "is_active", "$argon2"):
        assert all(secret not in text for text in texts), secret


def test_api3_bopla_registration_cannot_set_role_or_counters(client):
    body = {"username": "sneaky", "email": "s@example.com", "password": PASSWORD, "role": "admin", "post_count": 9}
    response = client.post(f"{API}/auth/register", json=body)
    assert response.status_code == 422
    assert {"role", "post_count"} <= set(response.get_json()["errors"])
    assert db.session.query(User).count() == 0


# -- API4:2023 Unrestricted Resource Consumption ----------------------------------------


def test_api4_resource_consumption_body_size_page_size_and_string_lengths_are_bounded(client, app, login):
    headers = login(UserFactory())
    big = "x" * (app.config["MAX_CONTENT_LENGTH"] + 1)
    assert client.post(f"{API}/posts", data=big, content_type="application/json", headers=headers).status_code == 413
    assert client.get(f"{API}/posts?limit=1000").status_code == 422
    assert client.get(f"{API}/users?q=" + "a" * 500).status_code == 422
    response = client.post(f"{API}/posts", json={"title": "t" * 201, "body": "b"}, headers=headers)
    assert response.status_code == 422
    assert db.session.query(Post).count() == 0


# -- API5:2023 Broken Function Level Authorization --------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/admin/users", None),
        ("patch", "/admin/users/{id}", {"role": "admin"}),
        ("patch", "/admin/users/{id}", {"is_active": False}),
    ],
)
def test_api5_bfla_admin_endpoints_refuse_users(client, login, method, path, body):
    user = UserFactory()
    response = getattr(client, method)(f"{API}{path.format(id=user.id)}", json=body, headers=login(user))
    assert response.status_code == 403
    assert client.get(f"{API}/admin/users").status_code == 401
    db.session.expire_all()
    assert db.session.get(User, user.id).role == "user"
    assert db.session.get(User, user.id).is_active is True


def test_api5_bfla_a_demoted_admin_loses_admin_rights_at_once(client, login):
    boss = AdminFactory()
    ex_admin = AdminFactory()
    headers = login(ex_admin)
    assert client.get(f"{API}/admin/users", headers=headers).status_code == 200
    client.patch(f"{API}/admin/users/{ex_admin.id}", json={"role": "user"}, headers=login(boss))
    assert client.get(f"{API}/admin/users", headers=headers).status_code == 403


# -- API6:2023 Unrestricted Access to Sensitive Business Flows ---------------------------


def test_api6_sensitive_flows_account_creation_is_rate_limited_per_address(client):
    statuses = [
        client.post(
            f"{API}/auth/register",
            json={"username": f"bot{i}", "email": f"bot{i}@example.com", "password": PASSWORD},
        ).status_code
        for i in range(11)
    ]
    assert statuses == [201] * 10 + [429]
    assert db.session.query(User).count() == 10


# -- API8:2023 Security Misconfiguration ------------------------------------------------


def test_api8_misconfiguration_no_cors_by_default_and_safe_headers(client):
    response = client.get(f"{API}/posts", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    login = client.post(f"{API}/auth/login", json={"login": "x", "password": "y"})
    assert login.headers["Cache-Control"] == "no-store"


SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


def test_api8_misconfiguration_security_headers_on_every_kind_of_response(app, client, login, monkeypatch):
    """The headers come with every answer: success, no content, each client error (as
    problem+json), a rate limit, the probes and the API document."""
    monkeypatch.setitem(app.config, "RATELIMIT_LOGIN_PER_ACCOUNT_IP", "1 per minute")
    user, other = UserFactory(), UserFactory()
    headers = login(user)
    wrong_login = {"login": "someone", "password": "not the password"}
    responses = {
        200: client.get(f"{API}/posts"),
        201: client.post(
            f"{API}/auth/register", json={"username": "fresh", "email": "f@example.com", "password": PASSWORD}
        ),
        204: client.put(f"{API}/users/{other.id}/follow", headers=headers),
        401: client.get(f"{API}/users/me"),
        404: client.get(f"{API}/posts/999999"),
        405: client.delete(f"{API}/users"),
        415: client.post(f"{API}/posts", data="x", content_type="text/plain", headers=headers),
        422: client.post(f"{API}/posts", json={"title": ""}, headers=headers),
        429: [client.post(f"{API}/auth/login", json=wrong_login) for _ in range(2)][-1],
    }
    for status, response in responses.items():
        assert response.status_code == status
        if status >= 400:
            assert response.mimetype == "application/problem+json", status
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (status, name)
    for path in ("/healthz", "/readyz", "/openapi.json"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert {name: response.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS, path


def test_api8_misconfiguration_cors_allows_only_configured_origins(app, test_db_url):
    allowed = create_app(
        {
            "APP_ENV": "test",
            "SQLALCHEMY_DATABASE_URI": test_db_url.render_as_string(False),
            "REDIS_URL": app.config["REDIS_URL"],
            "CORS_ORIGINS": ["https://app.example"],
        }
    ).test_client()
    good = allowed.options(
        f"{API}/posts", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert good.headers["Access-Control-Allow-Origin"] == "https://app.example"
    bad = allowed.get(f"{API}/posts", headers={"Origin": "https://evil.example"})
    assert bad.status_code == 200
    assert "Access-Control-Allow-Origin" not in bad.headers


def test_api8_misconfiguration_errors_never_show_internals(client):
    for response in (client.get(f"{API}/nope"), client.post(f"{API}/posts", data="{", content_type="application/json")):
        assert response.mimetype == "application/problem+json"
        assert "Traceback" not in response.get_data(as_text=True)


def test_api8_misconfiguration_non_json_bodies_are_415(client, login):
    response = client.post(
        f"{API}/posts",
        data="title=x&body=y",
        content_type="application/x-www-form-urlencoded",
        headers=login(UserFactory()),
    )
    assert response.status_code == 415
    assert db.session.query(Post).count() == 0


# -- API9:2023 Improper Inventory Management --------------------------------------------


def test_api9_inventory_every_served_route_is_documented_and_nothing_else(app, client):
    spec = client.get("/openapi.json").get_json()
    documented = {
        (path, method.upper()) for path, ops in spec["paths"].items() for method in ops if method != "parameters"
    }
    served = {
        (re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule), method)
        for rule in app.url_map.iter_rules()
        # besides the API: static files, the docs themselves, and /metrics (token-guarded ops)
        if rule.endpoint not in {"static", "metrics"} and not rule.endpoint.startswith("api-docs")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert served == documented


def test_api8_misconfiguration_retry_after_only_when_it_means_wait(client):
    body = {"username": "polite", "email": "p@example.com", "password": PASSWORD}
    created = client.post(f"{API}/auth/register", json=body)
    assert created.status_code == 201
    assert "Retry-After" not in created.headers


def test_api8_misconfiguration_a_chunked_non_json_body_is_415_too(client, login):
    response = client.post(
        f"{API}/posts",
        data=b"title=x",
        headers={**login(UserFactory()), "Transfer-Encoding": "chunked", "Content-Type": "text/plain"},
    )
    assert response.status_code == 415


def test_api4_resource_consumption_imports_are_rate_limited_per_user(client, app, login, monkeypatch):
    import io

    monkeypatch.setitem(app.config, "RATELIMIT_IMPORT_PER_USER", "2 per hour")
    headers = login(UserFactory())
    line = b'{"external_id": "a", "title": "t", "body": "b"}'
    statuses = [
        client.post(
            f"{API}/posts/import",
            data={"file": (io.BytesIO(line), "p.jsonl")},
            headers=headers,
            content_type="multipart/form-data",
        ).status_code
        for _ in range(3)
    ]
    assert statuses == [202, 202, 429]


def test_limits_switched_off_still_serve(app, test_db_url):
    import gc

    unlimited = create_app(
        {
            "APP_ENV": "test",
            "SQLALCHEMY_DATABASE_URI": test_db_url.render_as_string(False),
            "REDIS_URL": app.config["REDIS_URL"],
            "RATELIMIT_ENABLED": False,
        }
    )
    gc.collect()
    statuses = {
        unlimited.test_client().post(f"{API}/auth/login", json={"login": "x", "password": "y"}).status_code
        for _ in range(8)
    }
    assert statuses == {401}
