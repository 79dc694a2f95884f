"""Celery: the task calls the service; a real worker on the real broker runs it."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text, update

from app import cache
from app.extensions import db, redis_store
from app.models import User
from tests.conftest import open_session
from tests.factories import FollowFactory, PostFactory, UserFactory
from tests.processes import Worker, service_env
from worker.tasks import recount_counters


def test_recount_fixes_drifted_counters_and_reports_them():
    user = UserFactory()
    PostFactory.create_batch(2, author=user)
    FollowFactory(followed_id=user.id)
    db.session.execute(update(User).where(User.id == user.id).values(post_count=7, follower_count=0))
    db.session.commit()
    corrected = recount_counters.run()
    assert corrected["post_count"] == 1 and corrected["follower_count"] == 1 and corrected["following_count"] == 0
    assert corrected["corrected_ids"] == [user.id]
    db.session.refresh(user)
    assert (user.post_count, user.follower_count) == (2, 1)
    again = recount_counters.run()
    assert (again["post_count"], again["follower_count"], again["users_corrected"]) == (0, 0, 0)
    assert again["users_checked"] == corrected["users_checked"] == 2


def test_celery_is_configured_for_reliable_delivery(app):
    conf = app.extensions["celery"].conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] >= 3600
    assert (
        conf.result_backend_transport_options["visibility_timeout"]
        == conf.broker_transport_options["visibility_timeout"]
    )
    assert "recount-counters-nightly" in conf.beat_schedule


@pytest.fixture
def committed(app):
    """For tests whose data a worker process must see: commits for real, wiped after."""
    yield
    with app.app_context():
        db.session.remove()
        db.session.execute(text("TRUNCATE users CASCADE"))
        db.session.commit()


@pytest.fixture
def worker_process(app, test_db_url, tmp_path):
    worker = Worker(service_env(app, test_db_url), tmp_path / "worker.log").wait_ready()
    yield worker
    worker.stop()


@pytest.mark.no_transaction
def test_a_real_worker_runs_the_task_from_the_broker(app, committed, worker_process):
    with app.app_context():
        user = UserFactory()
        PostFactory(author=user)
        db.session.execute(update(User).where(User.id == user.id).values(post_count=40))
        db.session.commit()
        app.extensions["celery"].send_task("worker.tasks.recount_counters")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            db.session.expire_all()
            if db.session.get(User, user.id).post_count == 1:
                break
            time.sleep(0.1)
        assert db.session.get(User, user.id).post_count == 1, worker_process.log()


@pytest.mark.no_transaction
def test_a_new_display_name_reaches_every_cached_post_within_two_seconds(app, committed, worker_process):
    client = app.test_client()
    with app.app_context():
        author = UserFactory(display_name="Old Name")
        post_ids = [PostFactory(author=author).id for _ in range(5)]
        headers = {"Authorization": f"Bearer {open_session(author)['access_token']}"}
        raw = redis_store.client
    for post_id in post_ids:
        assert client.get(f"/api/v1/posts/{post_id}").get_json()["author"]["display_name"] == "Old Name"
    changed_at = time.monotonic()
    assert client.patch("/api/v1/users/me", json={"display_name": "New Name"}, headers=headers).status_code == 200
    while any(b"Old Name" in (raw.get(cache.post_key(p)) or b"") for p in post_ids):
        assert time.monotonic() - changed_at < 2, worker_process.log()
        time.sleep(0.05)
    for post_id in post_ids:
        assert client.get(f"/api/v1/posts/{post_id}").get_json()["author"]["display_name"] == "New Name"


def test_revocation_tasks_rebuild_sync_and_purge(client, redis_client):
    from app.auth import revocation
    from tests.conftest import open_session
    from worker.tasks import purge_expired_revocations, rebuild_revocation_mirror, sync_revocation_mirror

    tokens = open_session(UserFactory())
    client.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert rebuild_revocation_mirror.run() == 2
    assert redis_client.get(revocation.READY) is not None
    assert sync_revocation_mirror.run() == 2
    assert purge_expired_revocations.run() == {"revoked_tokens": 0, "sessions": 0}
