"""Celery: the task calls the service; a real worker on the real broker runs it."""

from __future__ import annotations

import io
import json
import time

import pytest
import redis
from sqlalchemy import func, select, text, update

from app import cache, queue
from app.db import db
from app.jobs import service as jobs
from app.models import Job, Post, User
from app.posts import imports
from app.redis_store import redis_store
from tests.support.factories import PostFactory, UserFactory
from tests.support.processes import Worker, service_env
from tests.support.sessions import open_session


@pytest.mark.no_transaction
def test_an_invalidation_is_done_while_a_long_import_is_still_running(app, committed, test_db_url, tmp_path):
    """Each queue has its worker: a cache invalidation does not wait for the import the
    other worker is busy with (held here on a lock of the author's row)."""
    env = service_env(app, test_db_url)
    short = Worker(env, tmp_path / "short.log", name="short", queues=[queue.SHORT])
    long = Worker(env, tmp_path / "long.log", name="long", queues=[queue.LONG])
    holder = None
    try:
        short.wait_ready(), long.wait_ready()
        with app.app_context():
            author_id = UserFactory().id
            job_id = imports.start(
                author_id, io.BytesIO(_import_file(20, 100)), "posts.jsonl", "", None, queue=False
            ).id
            # the import's INSERT checks the author's row (FOR KEY SHARE): it waits on this
            holder = db.engine.connect()
            holder.execute(text("SELECT 1 FROM users WHERE id = :id FOR UPDATE"), {"id": author_id})
            jobs.enqueue(job_id)
        _poll(app, job_id, lambda j: j.status == "running", 30, long)
        deadline = time.monotonic() + 10
        while _imports_waiting_on_a_lock(app) == 0:
            assert time.monotonic() < deadline, long.log()
            time.sleep(0.05)
        key = cache.post_key(424242)
        raw = redis.Redis.from_url(app.config["REDIS_URL"])
        raw.set(key, b"stale")
        with app.app_context():
            assert queue.send(queue.INVALIDATE_CACHE, [[key]])
        deadline = time.monotonic() + 10  # under the import's statement timeout (15 s)
        while raw.exists(key):
            assert time.monotonic() < deadline, f"invalidation not done\n{short.log()}\n{long.log()}"
            time.sleep(0.05)
        assert _poll(app, job_id, lambda j: True, 0, long).status == "running"
        assert _imports_waiting_on_a_lock(app) == 1  # the import is still blocked
        holder.rollback()
        job = _poll(app, job_id, lambda j: j.status in ("succeeded", "failed"), 30, long)
        assert (job.status, job.result["imported"], job.result["invalid"]) == ("succeeded", 20, 0)
    finally:
        if holder is not None:
            holder.close()
        short.stop()
        long.stop()


def _imports_waiting_on_a_lock(app) -> int:
    with app.app_context():
        try:
            return db.session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                    " AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO posts%'"
                )
            )
        finally:
            db.session.rollback()  # a transaction sees one snapshot of pg_stat_activity


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
        app.extensions["celery"].send_task(queue.NIGHTLY_RECOUNT)
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


def _poll(app, job_id, until, timeout: float, worker) -> Job:
    deadline = time.monotonic() + timeout
    with app.app_context():
        while True:
            db.session.expire_all()
            job = db.session.get(Job, job_id)
            if until(job):
                return job
            assert time.monotonic() < deadline, f"job stuck at {job.status} {job.progress_done}\n{worker.log()}"
            time.sleep(0.01)


def _import_file(lines: int, invalid_every: int) -> bytes:
    records = []
    for i in range(1, lines + 1):
        title = "" if i % invalid_every == 0 else f"Post {i}"
        records.append(json.dumps({"external_id": f"ext-{i}", "title": title, "body": f"Body of post {i}."}))
    return "\n".join(records).encode()


@pytest.mark.no_transaction
def test_a_worker_runs_an_uploaded_import_and_an_export(app, committed, worker_process):
    client = app.test_client()
    with app.app_context():
        author = UserFactory()
        headers = {"Authorization": f"Bearer {open_session(author)['access_token']}"}
    content = _import_file(300, invalid_every=100)
    response = client.post(
        "/api/v1/posts/import",
        data={"file": (io.BytesIO(content), "posts.jsonl")},
        headers=headers,
        content_type="multipart/form-data",
    )
    assert response.status_code == 202
    job = _poll(app, response.get_json()["id"], lambda j: j.status == "succeeded", 30, worker_process)
    assert (job.result["imported"], job.result["invalid"]) == (297, 3)
    export = client.post("/api/v1/users/me/export", headers=headers).get_json()
    _poll(app, export["id"], lambda j: j.status == "succeeded", 30, worker_process)
    document = client.get(f"/api/v1/jobs/{export['id']}/result", headers=headers).get_json()
    assert len(document["posts"]) == 297


@pytest.mark.no_transaction
def test_an_import_survives_its_worker_being_killed_and_finishes_once(app, committed, test_db_url, tmp_path):
    lines, invalid_every = 50_000, 1000
    env = service_env(app, test_db_url, JOB_STALE_SECONDS="2", JOB_REAPER_INTERVAL_SECONDS="1")
    client = app.test_client()
    with app.app_context():
        author = UserFactory()
        author_id = author.id
        headers = {"Authorization": f"Bearer {open_session(author)['access_token']}"}
    first = Worker(env, tmp_path / "first.log", name="first").wait_ready()
    try:
        response = client.post(
            "/api/v1/posts/import",
            data={"file": (io.BytesIO(_import_file(lines, invalid_every)), "posts.jsonl")},
            headers=headers,
            content_type="multipart/form-data",
        )
        assert response.status_code == 202
        job_id = response.get_json()["id"]
        midway = _poll(app, job_id, lambda j: j.progress_done >= 5_000, 60, first)
        first.kill()
    finally:
        first.stop()
    with app.app_context():
        db.session.expire_all()
        killed = db.session.get(Job, job_id)
        assert killed.status == "running" and 5_000 <= killed.progress_done < lines, killed.progress_done
    assert midway.progress_done < lines
    second = Worker(env, tmp_path / "second.log", name="second", beat=True).wait_ready()
    try:
        job = _poll(app, job_id, lambda j: j.status in ("succeeded", "failed"), 90, second)
    finally:
        second.stop()
    valid = lines - lines // invalid_every
    assert job.status == "succeeded", job.error
    assert (job.progress_done, job.progress_total, job.attempt) == (lines, lines, 2)
    assert (job.result["imported"], job.result["duplicates"], job.result["invalid"]) == (
        valid,
        0,
        lines // invalid_every,
    )
    assert [e["line"] for e in job.result["errors"]] == list(range(invalid_every, lines + 1, invalid_every))
    with app.app_context():
        imported = db.session.execute(
            select(func.count(), func.count(func.distinct(Post.external_id))).where(Post.author_id == author_id)
        ).one()
        assert tuple(imported) == (valid, valid)
        assert db.session.get(User, author_id).post_count == valid
