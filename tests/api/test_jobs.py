"""Jobs: imports, exports and recounts through the API and the CLI, run inline here
(tests/system/test_worker.py runs them in real worker processes)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from app import queue
from app.db import db
from app.jobs import service as jobs
from app.models import Job, JobKind, User
from tests.support.factories import AdminFactory, FollowFactory, PostFactory, UserFactory
from tests.support.imports import IMPORT, jsonl, posts_of, run_job, upload


def test_import_writes_valid_lines_reports_invalid_ones_and_is_idempotent(client, login):
    author = UserFactory()
    headers = login(author)
    content = jsonl(
        {"external_id": "a", "title": "First", "body": "One"},
        {"external_id": "b", "title": "", "body": "Two"},
        "not json",
        {"external_id": "c", "title": "Third", "body": "Three", "likes": 3},
        "",
        {"external_id": "d", "title": "Fourth", "body": "Four"},
        {"external_id": "a", "title": "First again", "body": "Same id in the same file"},
    )
    job = run_job(client, headers, upload(client, headers, content))
    assert job["status"] == "succeeded"
    assert (job["progress_done"], job["progress_total"]) == (6, 6)
    result = job["result"]
    assert (result["imported"], result["duplicates"], result["invalid"]) == (2, 1, 3)
    assert [(e["line"], sorted(e["errors"])) for e in result["errors"]] == [
        (2, ["title"]),
        (3, ["_line"]),
        (4, ["likes"]),
    ]
    assert posts_of(author.id) == 2
    assert client.get(f"/api/v1/users/{author.id}").get_json()["post_count"] == 2
    again = run_job(client, headers, upload(client, headers, content))
    assert (again["result"]["imported"], again["result"]["duplicates"]) == (0, 3)
    assert posts_of(author.id) == 2


def test_csv_import_and_a_bad_header(client, login):
    headers = login(UserFactory())
    good = b'external_id,title,body\nx1,Hello,"Body, with a comma"\nx2,Second,Text\nx3,Extra,Text,surplus\n'
    job = run_job(client, headers, upload(client, headers, good, "posts.csv"))
    assert (job["result"]["imported"], job["result"]["invalid"]) == (2, 1)
    assert job["result"]["errors"][0]["line"] == 4
    bad = run_job(client, headers, upload(client, headers, b"id,title\n1,x\n", "posts.csv"))
    assert bad["result"]["imported"] == 0 and bad["result"]["errors"][0]["line"] == 1


@pytest.mark.parametrize(
    ("content", "name", "form", "status", "field"),
    [
        (b'{"external_id": "a", "title": "t", "body": "b"}', "posts.txt", {}, 422, "format"),
        (b'{"external_id": "a", "title": "t", "body": "b"}', "posts.txt", {"format": "xml"}, 422, "format"),
        (b"\xff\xfe not utf-8", "posts.jsonl", {}, 422, "file"),
        (b"\n\n", "posts.jsonl", {}, 422, "file"),
        (b"external_id,title,body\n", "posts.csv", {}, 422, "file"),
    ],
)
def test_import_upload_validation(client, login, content, name, form, status, field):
    headers = login(UserFactory())
    response = upload(client, headers, content, name, **form)
    assert response.status_code == status
    assert field in response.get_json()["errors"]
    assert db.session.scalar(select(func.count()).select_from(Job)) == 0


def test_import_limits_and_wrong_bodies(client, login, app, monkeypatch):
    headers = login(UserFactory())
    monkeypatch.setitem(app.config, "IMPORT_MAX_LINES", 2)
    three = jsonl(*({"external_id": str(i), "title": "t", "body": "b"} for i in range(3)))
    assert upload(client, headers, three).status_code == 422
    monkeypatch.setitem(app.config, "IMPORT_MAX_BYTES", 100)
    assert upload(client, headers, b"x" * 200).status_code == 413
    assert client.post(IMPORT, json={"file": "x"}, headers=headers).status_code == 415
    assert client.post(IMPORT, data={}, headers=headers, content_type="multipart/form-data").status_code == 422
    assert upload(client, {}, three).status_code == 401


def test_export_is_downloadable_by_its_owner_only(client, login):
    me = UserFactory()
    PostFactory.create_batch(3, author=me)
    FollowFactory(followed_id=me.id)
    FollowFactory(follower_id=me.id)
    headers = login(me)
    start = client.post("/api/v1/users/me/export", headers=headers)
    job_id = start.get_json()["id"]
    result_url = f"/api/v1/jobs/{job_id}/result"
    assert client.get(result_url, headers=headers).status_code == 409  # not run yet
    job = run_job(client, headers, start)
    assert job["status"] == "succeeded" and job["progress_done"] == job["progress_total"] == 5
    download = client.get(result_url, headers=headers)
    assert download.status_code == 200
    assert "attachment" in download.headers["Content-Disposition"]
    document = download.get_json()
    assert document["profile"]["email"] == me.email
    assert (len(document["posts"]), len(document["followers"]), len(document["following"])) == (3, 1, 1)
    stranger, admin = login(UserFactory()), login(AdminFactory())
    assert client.get(result_url, headers=stranger).status_code == 404
    assert client.get(f"/api/v1/jobs/{job_id}", headers=stranger).status_code == 404
    assert client.get(f"/api/v1/jobs/{job_id}", headers=admin).status_code == 200
    assert client.get(result_url, headers=admin).status_code == 404


def test_recount_job_is_for_admins_and_reports_corrections(client, login):
    user = UserFactory()
    PostFactory(author=user)
    db.session.execute(update(User).where(User.id == user.id).values(post_count=9))
    db.session.commit()
    assert client.post("/api/v1/admin/jobs/recount", headers=login(user)).status_code == 403
    admin = login(AdminFactory())
    job = run_job(client, admin, client.post("/api/v1/admin/jobs/recount", headers=admin))
    assert job["status"] == "succeeded"
    assert job["result"]["post_count"] == 1 and job["result"]["corrected_ids"] == [user.id]
    assert job["progress_done"] == job["progress_total"] == 2


def test_jobs_list_shows_mine_newest_first(client, login):
    me, other = UserFactory(), UserFactory()
    first = client.post("/api/v1/users/me/export", headers=login(me)).get_json()["id"]
    jobs.run(first)  # one export at a time
    second = client.post("/api/v1/users/me/export", headers=login(me)).get_json()["id"]
    client.post("/api/v1/users/me/export", headers=login(other))
    ids = [j["id"] for j in client.get("/api/v1/jobs", headers=login(me)).get_json()["items"]]
    assert set(ids) == {first, second}
    assert client.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000", headers=login(me)).status_code == 404


def test_a_job_runs_once_and_a_worker_that_lost_its_claim_stops(app):
    job = jobs.create(JobKind.EXPORT_USER, UserFactory().id, queue=False)
    tracker = jobs.claim(job.id)
    assert jobs.claim(job.id) is None  # running, heartbeat fresh: not claimable
    db.session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=datetime.now(UTC) - timedelta(hours=1)))
    db.session.commit()
    takeover = jobs.claim(job.id)
    assert takeover.attempt == tracker.attempt + 1
    with pytest.raises(jobs.LostClaim):
        tracker.checkpoint(1, 1)
    assert jobs.run(job.id) is None  # still claimed by the takeover


def test_a_resumed_import_applies_each_line_once(client, login):
    author = UserFactory()
    content = jsonl(*({"external_id": str(i), "title": f"T{i}", "body": "b"} for i in range(2500)))
    from app.posts import imports

    job = imports.start(author.id, io.BytesIO(content), "p.jsonl", "", None, queue=False)
    # a first attempt committed two batches, then its worker died
    tracker = jobs.claim(job.id)
    tracker.state.update(imported=0, duplicates=0, invalid=0, errors=[])
    imports._write(author.id, [json.loads(line) for line in content.decode().splitlines()[:2000]], tracker.state)
    tracker.checkpoint(2000, 2500)
    db.session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=datetime.now(UTC) - timedelta(hours=1)))
    db.session.commit()
    assert jobs.run(job.id) == "succeeded"
    db.session.expire_all()
    done = db.session.get(Job, job.id)
    assert (done.result["imported"], done.result["duplicates"], done.progress_done) == (2500, 0, 2500)
    assert posts_of(author.id) == 2500
    assert db.session.get(User, author.id).post_count == 2500


def test_failed_job_records_a_plain_reason(client, login):
    job = jobs.create(JobKind.IMPORT_POSTS, UserFactory().id, params={"format": "jsonl"}, queue=False)
    assert jobs.run(job.id) == "failed"  # no input file
    db.session.expire_all()
    assert db.session.get(Job, job.id).error == {"detail": "The uploaded file is no longer stored; upload it again."}


def test_reaper_requeues_lost_and_abandoned_jobs(redis_client):
    owner = UserFactory().id
    lost = jobs.create(JobKind.EXPORT_USER, owner, queue=False)
    abandoned = jobs.create(JobKind.EXPORT_USER, owner, queue=False)
    fresh = jobs.create(JobKind.EXPORT_USER, owner, queue=False)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    db.session.execute(update(Job).where(Job.id == lost.id).values(created_at=hour_ago))
    db.session.execute(
        update(Job).where(Job.id == abandoned.id).values(status="running", heartbeat_at=hour_ago, attempt=1)
    )
    db.session.commit()
    assert jobs.requeue_stale() == 2
    queued = {json.loads(m)["headers"]["argsrepr"] for m in redis_client.lrange(queue.LONG, 0, -1)}
    assert queued == {repr([str(lost.id)]), repr([str(abandoned.id)])}
    assert jobs.requeue_stale() == 1  # the lost one was just queued again; the abandoned one is still stale
    assert str(fresh.id) not in str(queued)


def test_cli_import_recount_and_list(app, tmp_path):
    author = UserFactory(username="writer")
    path = tmp_path / "posts.jsonl"
    path.write_bytes(jsonl(*({"external_id": str(i), "title": "t", "body": "b"} for i in range(1500)), "oops"))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["jobs", "import-posts", str(path), "--user", "writer"])
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.output and '"imported": 1500' in result.output and "line 1501" in result.output
    assert posts_of(author.id) == 1500
    recount = runner.invoke(args=["jobs", "recount"])
    assert recount.exit_code == 0 and "succeeded" in recount.output
    listing = runner.invoke(args=["jobs", "list"]).output
    assert "import_posts" in listing and "recount" in listing and "writer" in listing
    missing = runner.invoke(args=["jobs", "import-posts", str(path), "--user", "nobody"])
    assert missing.exit_code != 0


@pytest.mark.parametrize(
    "record",
    [
        {"external_id": "a", "title": "t", "body": "b"},
        {"external_id": "a", "title": "t" * 200, "body": "b" * 20000},
        {"external_id": "a", "title": "t" * 201, "body": "b"},
        {"external_id": "a" * 101, "title": "t", "body": "b"},
        {"external_id": "a", "title": " ", "body": "b"},
        {"external_id": "a", "title": "", "body": "b"},
        {"external_id": "a", "title": "t\x00", "body": "b"},
        {"external_id": "a", "title": "t\ud800", "body": "b"},
        {"external_id": 1, "title": "t", "body": "b"},
        {"external_id": "a", "title": "t"},
        {"external_id": "a", "title": "t", "body": "b", "extra": 1},
        {"external_id": "a", "title": None, "body": "b"},
        ["a", "t", "b"],
    ],
)
def test_the_quick_line_check_never_accepts_what_the_schema_refuses(record):
    from app.posts.imports import ImportLineSchema, plainly_valid

    if plainly_valid(record):
        assert ImportLineSchema().validate(record) == {}
    assert plainly_valid(record) == (isinstance(record, dict) and ImportLineSchema().validate(record) == {})
