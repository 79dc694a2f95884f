"""Celery without a worker: the counter recount the nightly job runs, the delivery
settings, each task's queue, and the revocation tasks run inline
(tests/system/test_worker.py runs tasks in real worker processes)."""

from __future__ import annotations

from sqlalchemy import update

from app import queue
from app.db import db
from app.models import User
from app.users.service import recount_counters
from tests.support.factories import FollowFactory, PostFactory, UserFactory


def test_recount_fixes_drifted_counters_and_reports_them():
    user = UserFactory()
    PostFactory.create_batch(2, author=user)
    FollowFactory(followed_id=user.id)
    db.session.execute(update(User).where(User.id == user.id).values(post_count=7, follower_count=0))
    db.session.commit()
    corrected = recount_counters()
    assert corrected["post_count"] == 1 and corrected["follower_count"] == 1 and corrected["following_count"] == 0
    assert corrected["corrected_ids"] == [user.id]
    db.session.refresh(user)
    assert (user.post_count, user.follower_count) == (2, 1)
    again = recount_counters()
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


def test_short_tasks_and_long_jobs_go_to_queues_of_their_own(app):
    import worker.tasks  # noqa: F401  (registers the tasks)

    celery = app.extensions["celery"]

    def queue_of(name: str) -> str:
        return celery.amqp.router.route({}, name)["queue"].name

    ours = sorted(name for name in celery.tasks if name.startswith("worker.tasks."))
    assert len(ours) >= 8
    unrouted = [name for name in ours if name not in queue.ROUTES]
    assert unrouted == [], "give each task its queue in app/queue.py ROUTES"
    assert {name: queue_of(name) for name in ours}.items() >= {
        queue.INVALIDATE_CACHE: "short",
        queue.INVALIDATE_AUTHOR_POSTS: "short",
        queue.REBUILD_REVOCATION_MIRROR: "short",
        queue.SYNC_REVOCATION_MIRROR: "short",
        queue.REQUEUE_STALE_JOBS: "short",
        queue.RUN_JOB: "long",
        queue.PURGE_EXPIRED_REVOCATIONS: "long",
    }.items()
    # beat sends by name, through the same routes
    beat = celery.conf.beat_schedule
    assert [entry for entry, spec in beat.items() if spec["task"] not in queue.ROUTES] == []
    assert {entry: queue_of(beat[entry]["task"]) for entry in beat}.items() >= {
        "requeue-stale-jobs": "short",
        "sync-revocation-mirror": "short",
        "purge-expired-revocations": "long",
    }.items()
    assert queue_of("worker.tasks.not_routed") == "long"  # never in the way of the short ones
    assert set(celery.amqp.queues) == {"short", "long"}  # a worker without -Q consumes both


def test_revocation_tasks_rebuild_sync_and_purge(client, redis_client):
    from app.auth import revocation
    from tests.support.sessions import open_session
    from worker.tasks import purge_expired_revocations, rebuild_revocation_mirror, sync_revocation_mirror

    tokens = open_session(UserFactory())
    client.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert rebuild_revocation_mirror.run() == 2
    assert redis_client.get(revocation.READY) is not None
    assert sync_revocation_mirror.run() == 2
    assert purge_expired_revocations.run() == {"revoked_tokens": 0, "sessions": 0}
