"""Deleting an account (DELETE /users/me, DELETE /admin/users/{id}, `flask users delete`):
refused and hidden everywhere at once, then removed in batches by a job, after which
the username and email are free again."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.auth import account_tokens
from app.db import db
from app.jobs import service as jobs
from app.mail import outbox
from app.models import AccountToken, AuthSession, Follow, Job, OutboxMail, Post, TokenPurpose, User
from tests.support.factories import PASSWORD, AdminFactory, FollowFactory, PostFactory, UserFactory

API = "/api/v1"
ME = f"{API}/users/me"


def count(model, *where) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def the_deletion_job() -> Job:
    return db.session.scalars(select(Job).where(Job.kind == "delete_user").order_by(Job.created_at.desc())).first()


@pytest.fixture
def doomed():
    """An account with posts, followers, people it follows, sessions, a mailed token, an
    outbox row and a job of its own."""
    user = UserFactory(username="doomed", email="Doomed@example.com")
    posts = [PostFactory(author=user) for _ in range(5)]
    fan, idol = UserFactory(), UserFactory()
    FollowFactory(follower_id=fan.id, followed_id=user.id)
    FollowFactory(follower_id=user.id, followed_id=idol.id)
    account_tokens.issue(user.id, TokenPurpose.RESET, timedelta(minutes=30))
    outbox.add(user.id, user.email, "verify_email", username="d", email="e", token="t", link="l", hours=1)
    jobs.new(jobs.JobKind.EXPORT_USER, user.id)
    db.session.commit()
    return user, posts, fan, idol


def test_deleting_my_account_needs_a_fresh_login(client, login, doomed):
    user = doomed[0]
    response = client.delete(ME, headers=login(user))
    assert response.status_code == 401 and "fresh" in response.get_json()["detail"]
    db.session.expire_all()
    assert db.session.get(User, user.id).deleted_at is None


def test_at_once_every_token_is_refused_and_the_account_vanishes_from_every_read(client, login, doomed):
    user, posts, fan, _ = doomed
    headers, other_session = login(user, fresh=True), login(user)
    refresh = login(user, "refresh")
    fan_headers = login(fan)
    # warm every cache that shows the account: profile, a post, the lists, the fan's feed
    reads = {
        "profile": f"{API}/users/{user.id}",
        "post": f"{API}/posts/{posts[0].id}",
        "posts": f"{API}/posts",
        "users": f"{API}/users",
        "their posts": f"{API}/users/{user.id}/posts",
    }
    for url in reads.values():
        assert client.get(url).status_code == 200
    assert client.get(f"{API}/feed", headers=fan_headers).get_json()["items"]
    assert client.delete(ME, headers=headers).status_code == 204
    for token in (headers, other_session):
        assert client.get(ME, headers=token).status_code == 401
    assert client.post(f"{API}/auth/refresh", headers=refresh).status_code == 401
    assert client.get(reads["profile"]).status_code == 404
    assert client.get(reads["post"]).status_code == 404
    assert client.get(reads["their posts"]).status_code == 404
    post_ids = {p.id for p in posts}
    assert not post_ids & {item["id"] for item in client.get(reads["posts"]).get_json()["items"]}
    assert user.id not in {item["id"] for item in client.get(reads["users"]).get_json()["items"]}
    assert client.get(f"{API}/feed", headers=fan_headers).get_json()["items"] == []
    assert client.get(f"{API}/users/{fan.id}/following").get_json()["items"] == []
    assert client.post(f"{API}/auth/login", json={"login": "doomed", "password": PASSWORD}).status_code == 401
    job = the_deletion_job()
    assert (job.status, job.owner_id, job.params) == ("queued", None, {"user_id": user.id})
    # the sessions ended as a deactivation ends them (revoked, mirrored to Redis)
    assert count(AuthSession, AuthSession.user_id == user.id, AuthSession.revoked_at.is_(None)) == 0
    assert count(AuthSession, AuthSession.user_id == user.id, AuthSession.revoked_reason == "deleted-by-owner") == 3


def test_the_job_removes_every_row_in_batches_fixes_counts_and_frees_the_names(app, client, login, doomed, monkeypatch):
    user, _, fan, idol = doomed
    user_id, fan_id, idol_id = user.id, fan.id, idol.id
    monkeypatch.setitem(app.config, "ACCOUNT_DELETE_BATCH", 2)
    assert client.get(f"{API}/users/{idol_id}").get_json()["follower_count"] == 1  # cached now
    assert client.delete(ME, headers=login(user, fresh=True)).status_code == 204
    job = the_deletion_job()
    assert jobs.run(job.id) == "succeeded"
    db.session.expire_all()
    assert db.session.get(User, user_id) is None
    for model, column in (
        (Post, Post.author_id),
        (Follow, Follow.follower_id),
        (Follow, Follow.followed_id),
        (AuthSession, AuthSession.user_id),
        (AccountToken, AccountToken.user_id),
        (OutboxMail, OutboxMail.user_id),
        (Job, Job.owner_id),
    ):
        assert count(model, column == user_id) == 0, model
    assert db.session.get(User, fan_id).following_count == 0
    assert db.session.get(User, idol_id).follower_count == 0
    finished = db.session.get(Job, job.id)
    assert finished.result["deleted"] == {
        "posts": 5,
        "following": 1,
        "followers": 1,
        "sessions": 1,
        "tokens": 1,
        "mail": 1,
        "jobs": 1,
        "account": 1,
    }
    assert finished.progress_done == 12
    # the fan's profile, whose count changed, is not served stale
    assert client.get(f"{API}/users/{idol_id}").get_json()["follower_count"] == 0
    again = client.post(
        f"{API}/auth/register", json={"username": "DOOMED", "email": "doomed@EXAMPLE.com", "password": PASSWORD}
    )
    assert again.status_code == 201


def test_the_job_refuses_an_account_not_marked_deleted():
    live = UserFactory()
    PostFactory(author=live)
    job = jobs.new(jobs.JobKind.DELETE_USER, None, params={"user_id": live.id})
    db.session.commit()
    assert jobs.run(job.id) == "failed"
    assert count(Post, Post.author_id == live.id) == 1
    assert "not marked for deletion" in db.session.get(Job, job.id).error["detail"]


def test_admins_delete_accounts_but_not_their_own_here(client, login, doomed):
    user = doomed[0]
    admin = AdminFactory()
    url = f"{API}/admin/users/{user.id}"
    assert client.delete(url, headers=login(UserFactory())).status_code == 403
    assert client.delete(f"{API}/admin/users/{admin.id}", headers=login(admin)).status_code == 422
    assert client.delete(f"{API}/admin/users/999999", headers=login(admin)).status_code == 404
    response = client.delete(url, headers=login(admin))
    assert response.status_code == 202
    assert response.get_json()["kind"] == "delete_user"
    assert response.headers["Location"] == f"{API}/jobs/{response.get_json()['id']}"
    assert client.get(response.headers["Location"], headers=login(admin)).status_code == 200
    assert client.get(f"{API}/users/{user.id}").status_code == 404
    assert client.delete(url, headers=login(admin)).status_code == 404  # already being deleted
    # and it cannot be brought back while the job runs
    assert client.patch(url, json={"is_active": True}, headers=login(admin)).status_code == 404


def test_the_cli_deletes_and_runs_the_job_itself(app, doomed):
    user_id = doomed[0].id
    result = app.test_cli_runner().invoke(args=["users", "delete", "DOOMED", "--yes"])
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.output
    db.session.expire_all()
    assert db.session.get(User, user_id) is None
    assert app.test_cli_runner().invoke(args=["users", "delete", "doomed", "--yes"]).exit_code != 0


def test_a_deleted_account_gets_no_reset_mail(client, mail_on, login, doomed):
    user = doomed[0]
    client.delete(ME, headers=login(user, fresh=True))
    before = count(OutboxMail)
    assert client.post(f"{API}/auth/password-reset", json={"email": user.email}).status_code == 202
    assert count(OutboxMail) == before
