"""Celery: the task calls the service; a real worker on the real broker runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import text, update

from app.extensions import db
from app.models import User
from tests.factories import FollowFactory, PostFactory, UserFactory
from worker.tasks import recount_counters


def test_recount_fixes_drifted_counters_and_reports_them():
    user = UserFactory()
    PostFactory.create_batch(2, author=user)
    FollowFactory(followed_id=user.id)
    db.session.execute(update(User).where(User.id == user.id).values(post_count=7, follower_count=0))
    db.session.commit()
    corrected = recount_counters.run()
    assert corrected == {"post_count": 1, "follower_count": 1, "following_count": 0}
    db.session.refresh(user)
    assert (user.post_count, user.follower_count) == (2, 1)
    assert recount_counters.run() == {"post_count": 0, "follower_count": 0, "following_count": 0}


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


@pytest.mark.no_transaction
def test_a_real_worker_runs_the_task_from_the_broker(app, test_db_url, tmp_path):
    with app.app_context():
        user = UserFactory()
        PostFactory(author=user)
        db.session.execute(update(User).where(User.id == user.id).values(post_count=40))
        db.session.commit()
        user_id = user.id
    env = {
        **os.environ,
        "APP_ENV": "test",
        "DATABASE_URL": test_db_url.render_as_string(hide_password=False),
        "REDIS_URL": app.config["REDIS_URL"],
    }
    log_file = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "worker",
            "--pool=solo",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"test-{os.getpid()}@%h",
        ],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        with app.app_context():
            app.extensions["celery"].send_task("worker.tasks.recount_counters")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                db.session.expire_all()
                if db.session.get(User, user_id).post_count == 1:
                    break
                time.sleep(0.2)
            assert db.session.get(User, user_id).post_count == 1, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        log_file.close()
        with app.app_context():
            db.session.remove()
            db.session.execute(text("TRUNCATE users CASCADE"))
            db.session.commit()


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
