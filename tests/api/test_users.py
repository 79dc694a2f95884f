"""/users: listing and search, profiles, my profile and its preconditions, follows."""

from __future__ import annotations

import pytest

from app.db import db
from app.models import Follow, User
from tests.support.factories import PUBLIC_PROFILE_FIELDS, FollowFactory, PostFactory, UserFactory

USERS = "/api/v1/users"


def test_list_users_by_id_with_public_fields_only(client):
    made = UserFactory.create_batch(3)
    body = client.get(USERS).get_json()
    assert [u["id"] for u in body["items"]] == [u.id for u in made]
    assert body["next_cursor"] is None
    for item in body["items"]:
        assert set(item) == PUBLIC_PROFILE_FIELDS


def test_inactive_users_are_hidden(client):
    shown = UserFactory()
    hidden = UserFactory(is_active=False)
    ids = [u["id"] for u in client.get(USERS).get_json()["items"]]
    assert ids == [shown.id]
    assert client.get(f"{USERS}/{hidden.id}").status_code == 404


def test_search_is_a_case_insensitive_prefix_on_username_or_display_name(client):
    ann = UserFactory(username="annabel", display_name="Zed")
    UserFactory(username="bob", display_name="Bob")
    zoe = UserFactory(username="zoe", display_name="Annie Z")
    UserFactory(username="hannah", display_name="Hannah")
    ids = {u["id"] for u in client.get(f"{USERS}?q=ANN").get_json()["items"]}
    assert ids == {ann.id, zoe.id}


@pytest.mark.parametrize("needle", ["%", "_", "\\"])
def test_search_treats_like_wildcards_literally(client, needle):
    UserFactory(username="plain")
    assert client.get(USERS, query_string={"q": needle}).get_json()["items"] == []


def test_include_posts_embeds_the_five_newest_of_each_user(client):
    busy = UserFactory()
    posts = [PostFactory(author=busy) for _ in range(7)]
    quiet = UserFactory()
    body = client.get(f"{USERS}?include=posts").get_json()
    by_id = {u["id"]: u for u in body["items"]}
    assert [p["id"] for p in by_id[busy.id]["posts"]] == [p.id for p in reversed(posts)][:5]
    assert by_id[quiet.id]["posts"] == []
    assert "posts" not in client.get(USERS).get_json()["items"][0]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("include=comments", "include"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("q=", "q"),
        ("q=" + "a" * 51, "q"),
        ("sort=id", "sort"),
        ("cursor=%%%", "cursor"),
    ],
)
def test_list_query_validation(client, query, field):
    response = client.get(f"{USERS}?{query}")
    assert response.status_code == 422
    assert field in response.get_json()["errors"]


def test_profile_has_counts_from_the_database(client):
    user = UserFactory()
    PostFactory.create_batch(2, author=user)
    for _ in range(3):
        FollowFactory(followed_id=user.id)
    FollowFactory(follower_id=user.id)
    body = client.get(f"{USERS}/{user.id}").get_json()
    assert (body["post_count"], body["follower_count"], body["following_count"]) == (2, 3, 1)
    assert "email" not in body and "role" not in body


def test_unknown_user_is_404_problem(client):
    response = client.get(f"{USERS}/999999")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert client.get(f"{USERS}/abc").status_code == 404


def test_me_shows_email_and_role_with_an_etag(client, login):
    user = UserFactory()
    response = client.get(f"{USERS}/me", headers=login(user))
    assert response.status_code == 200
    assert response.get_json()["email"] == user.email
    assert response.get_json()["role"] == "user"
    assert response.headers["ETag"] == '"v1"'


def test_me_requires_a_token(client):
    assert client.get(f"{USERS}/me").status_code == 401
    assert client.patch(f"{USERS}/me", json={"bio": "x"}).status_code == 401


def test_patch_me_changes_the_profile_and_the_etag(client, login):
    user = UserFactory()
    headers = login(user)
    etag = client.get(f"{USERS}/me", headers=headers).headers["ETag"]
    response = client.patch(
        f"{USERS}/me", json={"display_name": "New Name", "bio": "Writes SQL."}, headers={**headers, "If-Match": etag}
    )
    assert response.status_code == 200
    assert response.get_json()["display_name"] == "New Name"
    assert response.headers["ETag"] != etag
    public = client.get(f"{USERS}/{user.id}").get_json()
    assert (public["display_name"], public["bio"]) == ("New Name", "Writes SQL.")


def test_patch_me_with_a_stale_etag_is_412_and_changes_nothing(client, login):
    user = UserFactory(bio="original")
    headers = login(user)
    etag = client.get(f"{USERS}/me", headers=headers).headers["ETag"]
    assert client.patch(f"{USERS}/me", json={"bio": "first"}, headers={**headers, "If-Match": etag}).status_code == 200
    response = client.patch(f"{USERS}/me", json={"bio": "second"}, headers={**headers, "If-Match": etag})
    assert response.status_code == 412
    assert client.get(f"{USERS}/{user.id}").get_json()["bio"] == "first"


def test_patch_me_with_a_malformed_if_match_is_412_and_changes_nothing(client, login):
    user = UserFactory(bio="original")
    headers = {**login(user), "If-Match": '"v1'}
    response = client.patch(f"{USERS}/me", json={"bio": "changed"}, headers=headers)
    assert response.status_code == 412
    assert response.get_json()["errors"] == {"If-Match": ['current ETag is "v1"']}
    assert client.get(f"{USERS}/{user.id}").get_json()["bio"] == "original"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"role": "admin"}, "role"),
        ({"email": "not-an-address"}, "email"),  # an address may be set (with a fresh login), a bad one not
        ({"post_count": 100}, "post_count"),
        ({"display_name": ""}, "display_name"),
        ({"display_name": "   "}, "display_name"),
        ({"display_name": "x" * 51}, "display_name"),
        ({"bio": "x" * 501}, "bio"),
        ({}, "_schema"),
    ],
)
def test_patch_me_rejects_what_a_user_may_not_set(client, login, body, field):
    user = UserFactory()
    response = client.patch(f"{USERS}/me", json=body, headers=login(user))
    assert response.status_code == 422
    assert field in response.get_json()["errors"]
    db.session.expire_all()
    fresh = db.session.get(User, user.id)
    assert (fresh.role, fresh.email, fresh.version, fresh.post_count) == ("user", user.email, 1, 0)


def test_follow_is_idempotent_and_keeps_counts(client, login):
    me, them = UserFactory(), UserFactory()
    headers = login(me)
    for _ in range(2):
        response = client.put(f"{USERS}/{them.id}/follow", headers=headers)
        assert response.status_code == 204
        assert response.data == b""
    assert client.get(f"{USERS}/{them.id}").get_json()["follower_count"] == 1
    assert client.get(f"{USERS}/{me.id}").get_json()["following_count"] == 1
    for _ in range(2):
        assert client.delete(f"{USERS}/{them.id}/follow", headers=headers).status_code == 204
    assert client.get(f"{USERS}/{them.id}").get_json()["follower_count"] == 0
    assert client.get(f"{USERS}/{me.id}").get_json()["following_count"] == 0
    assert db.session.query(Follow).count() == 0


def test_follow_yourself_is_422_and_unknown_user_404(client, login):
    me = UserFactory()
    headers = login(me)
    assert client.put(f"{USERS}/{me.id}/follow", headers=headers).status_code == 422
    assert client.delete(f"{USERS}/{me.id}/follow", headers=headers).status_code == 422
    assert client.put(f"{USERS}/999999/follow", headers=headers).status_code == 404
    assert client.delete(f"{USERS}/999999/follow", headers=headers).status_code == 404
    assert client.put(f"{USERS}/{me.id}/follow").status_code == 401


def test_followers_and_following_most_recent_first(client, login):
    star = UserFactory()
    fans = UserFactory.create_batch(3)
    for fan in fans:
        client.put(f"{USERS}/{star.id}/follow", headers=login(fan))
    followers = client.get(f"{USERS}/{star.id}/followers").get_json()["items"]
    assert [u["id"] for u in followers] == [f.id for f in reversed(fans)]
    following = client.get(f"{USERS}/{fans[0].id}/following").get_json()["items"]
    assert [u["id"] for u in following] == [star.id]
    assert client.get(f"{USERS}/999999/followers").status_code == 404
    assert client.get(f"{USERS}/999999/following").status_code == 404


def test_user_posts_newest_first(client):
    author = UserFactory()
    posts = PostFactory.create_batch(3, author=author)
    PostFactory()
    items = client.get(f"{USERS}/{author.id}/posts").get_json()["items"]
    assert [p["id"] for p in items] == [p.id for p in reversed(posts)]
    assert client.get(f"{USERS}/999999/posts").status_code == 404
