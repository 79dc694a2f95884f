"""Uploads and jobs with bounded cost, through the API: uploads stored and read in chunks,
bad lines reported plainly, small job reports, caps on unfinished imports and on exports,
and the purges of old files."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from app import uploads
from app.db import db
from app.errors import ServiceUnavailable, TooManyRequests, ValidationFailed
from app.factory import create_app
from app.jobs import files
from app.jobs import service as jobs
from app.models import Job, JobFile, JobFileChunk, JobKind
from app.posts import imports
from app.schemas import SURROGATE_MESSAGE
from tests.support.factories import FollowFactory, PostFactory, UserFactory
from tests.support.imports import EXPORT, IMPORT, PROBLEM, good, jsonl, posts_of, run_job, upload
from tests.support.processes import free_port


def count(model, *where) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def stored(job_id) -> bytes:
    return b"".join(files.chunks(job_id, "input"))


# -- the web request: checked and stored chunk by chunk --------------------------------


def reference_lines(data: bytes) -> int:
    return sum(1 for line in data.split(b"\n") if line.strip())


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_the_upload_check_counts_lines_and_decodes_across_any_chunking(size):
    data = 'x\n\n  \n é€😀 \r\n\t\n{"a": 1}\r\n\nlast é'.encode() * 50
    check = imports.UploadCheck("jsonl", max_lines=10_000)
    for at in range(0, len(data), size):
        check.feed(data[at : at + size])
    assert check.finish() == reference_lines(data) == 151  # "last é" runs into the next "x"
    csv = imports.UploadCheck("csv", max_lines=10_000)
    csv.feed(data)
    assert csv.finish() == 150  # the header is not a post


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"ok\n" * 1000 + b"\xff\n", "Not UTF-8."),
        (b"ok\n" * 1000 + b"\xe2\x82", "Not UTF-8."),  # cut inside a character, at the very end
        # (in chunks of 7) a character cut, an ASCII chunk, then the byte that would end it
        (b"abcde\xe2\x82" + b"xyz\nxyz" + b"\xac\n", "Not UTF-8."),
        (b" \n\t\n", "Empty."),
        (b"a\nb\nc\n", "More than 2 lines."),
    ],
)
def test_the_upload_check_refuses_what_cannot_be_imported(data, error):
    check = imports.UploadCheck("jsonl", max_lines=2 if error.startswith("More") else 10_000)
    with pytest.raises(ValidationFailed) as refused:
        for at in range(0, len(data), 7):
            check.feed(data[at : at + 7])
        check.finish()
    assert refused.value.errors == {"file": [error]}


def test_a_large_upload_is_stored_in_chunks_byte_for_byte(client, login):
    author = UserFactory()
    headers = login(author)
    line = json.dumps({"external_id": "x", "title": "é", "body": "€" * 300}).encode() + b"\n"
    content = line * (3 * files.CHUNK_BYTES // len(line) + 1)  # characters straddle chunk edges
    response = upload(client, headers, content)
    assert response.status_code == 202
    job_id = uuid.UUID(response.get_json()["id"])
    assert response.get_json()["progress_total"] == content.count(b"\n")
    assert count(JobFileChunk, JobFileChunk.job_id == job_id) == 4
    assert db.session.get(JobFile, (job_id, "input")).size == len(content)
    assert stored(job_id) == content


@pytest.mark.parametrize("where", ["start", "past the first chunk"])
def test_an_upload_refused_midway_leaves_nothing_behind(client, login, app, monkeypatch, where):
    headers = login(UserFactory())
    lines = jsonl(*(good(i) for i in range(40_000)))
    bad = b"\xff" + lines if where == "start" else lines + b"\n\xff\n"
    response = upload(client, headers, bad)
    assert response.status_code == 422 and response.get_json()["errors"] == {"file": ["Not UTF-8."]}
    monkeypatch.setitem(app.config, "IMPORT_MAX_LINES", 39_999)
    response = upload(client, headers, lines)
    assert response.status_code == 422 and response.get_json()["errors"] == {"file": ["More than 39999 lines."]}
    assert (count(Job), count(JobFile), count(JobFileChunk)) == (0, 0, 0)


# -- the worker: line by line, bad lines reported and skipped ---------------------------


@pytest.mark.parametrize("size", [1, 5, 16, 1000])
def test_lines_come_whole_from_any_chunking_and_long_ones_are_skipped(size):
    data = b"one\ntwo\r\n\nthree-is-too-long\nfour\n" + b"x" * 40 + b"\nfive"
    chunks = [data[at : at + size] for at in range(0, len(data), size)]
    lines = imports.Lines(chunks, limit=12)
    seen = []
    while True:
        try:
            seen.append((lines.number + 1, next(lines)))
        except StopIteration:
            break
        except imports.BadLine as bad:
            seen.append((bad.number, bad.reason))
    assert seen == [
        (1, b"one\n"),
        (2, b"two\r\n"),
        (3, b"\n"),
        (4, "Longer than 12 bytes."),
        (5, b"four\n"),
        (6, "Longer than 12 bytes."),
        (7, b"five"),
    ]


def test_bad_json_lines_are_reported_by_number_and_the_good_ones_imported(client, login):
    author = UserFactory()
    headers = login(author)
    content = jsonl(
        good(1),
        r'{"external_id": "s", "title": "half a pair \ud800 SECRET", "body": "b"}',
        "[" * 50_000 + "]" * 50_000,
        '{"external_id": "n", "title": "t", "body": "b", "n": ' + "7" * 5_000 + "}",
        good(2),
        json.dumps({"external_id": "long", "title": "t", "body": "SECRET" * 200_000}),
        '{"external_id": "a", SECRET}',
        good(3),
    )
    job = run_job(client, headers, upload(client, headers, content))
    assert job["status"] == "succeeded" and job["error"] is None
    result = job["result"]
    assert (result["imported"], result["invalid"], result["unlisted"]) == (3, 5, 0)
    assert [(e["line"], e["errors"]) for e in result["errors"]] == [
        (2, {"title": [SURROGATE_MESSAGE]}),
        (3, {"_line": ["Not JSON that can be read: nested too deeply."]}),
        (4, {"_line": ["Not JSON that can be read: a number with too many digits."]}),
        (6, {"_line": [f"Longer than {imports.MAX_LINE_BYTES} bytes."]}),
        (7, {"_line": ["Not JSON: Expecting property name enclosed in double quotes (column 22)."]}),
    ]
    # nothing of the bad lines is echoed (a run of sevens that no timestamp or id holds)
    assert "SECRET" not in json.dumps(job) and "7" * 50 not in json.dumps(job)
    assert posts_of(author.id) == 3
    assert (job["progress_done"], job["progress_total"]) == (8, 8)


def test_bad_csv_lines_are_reported_and_skipped(client, login):
    author = UserFactory()
    headers = login(author)
    huge = "SECRET" * 30_000  # over the csv module's field size limit
    content = f'external_id,title,body\nc1,One,Body\nc2,"{huge}",Body\nc3,Three,Body\nc4,Four\n'.encode()
    job = run_job(client, headers, upload(client, headers, content, "posts.csv"))
    assert job["status"] == "succeeded"
    assert (job["result"]["imported"], job["result"]["invalid"]) == (2, 2)
    assert [(e["line"], e["errors"]) for e in job["result"]["errors"]] == [
        (3, {"_line": ["A field is longer than 131072 characters."]}),
        (5, {"body": ["Field may not be null."]}),
    ]
    assert "SECRET" not in json.dumps(job)


def test_a_line_that_is_not_utf8_is_skipped_by_the_worker(app):
    """The web request refuses such a file; a file stored otherwise (the CLI of an older
    release) still imports its good lines."""
    author = UserFactory()
    job = jobs.new(JobKind.IMPORT_POSTS, author.id, params={"format": "jsonl"})
    out = files.FileWriter(job.id, "input", "application/x-ndjson", "p.jsonl")
    out.write(jsonl(good(1)) + b'\n{"external_id": "\xff\xfe"}\n' + jsonl(good(2)))
    out.close()
    jobs.submit(job, queue=False)
    assert jobs.run(job.id) == "succeeded"
    db.session.expire_all()
    done = db.session.get(Job, job.id)
    assert done.result["errors"] == [{"line": 2, "errors": {"_line": ["Not UTF-8."]}}]
    assert done.result["imported"] == 2
    assert db.session.get(JobFile, (job.id, "input")) is None  # imported: dropped


def test_an_internal_error_fails_the_job_without_its_text(app):
    author = UserFactory()
    job = jobs.new(JobKind.IMPORT_POSTS, author.id, params={})  # no format: a KeyError inside
    out = files.FileWriter(job.id, "input", "application/x-ndjson", "p.jsonl")
    out.write(jsonl(good(1)))
    out.close()
    jobs.submit(job, queue=False)
    assert jobs.run(job.id) == "failed"
    db.session.expire_all()
    assert db.session.get(Job, job.id).error == jobs.INTERNAL_ERROR


# -- the report stays small --------------------------------------------------------------


def test_the_report_stays_small_whatever_the_lines_hold(client, login, app):
    author = UserFactory()
    headers = login(author)
    records = [
        {"external_id": f"u{i}", "title": "t", "body": "b", **{f"{k:03d}" + "k" * 200: 1 for k in range(100)}}
        for i in range(300)
    ]
    job = run_job(client, headers, upload(client, headers, jsonl(*records)))
    result = job["result"]
    assert (result["invalid"], len(result["errors"]), result["unlisted"]) == (300, 100, 200)
    first = result["errors"][0]
    assert first == {
        "line": 1,
        "errors": {
            "000" + "k" * 36 + "…": ["Unknown field."],
            "001" + "k" * 36 + "…": ["Unknown field."],
            "002" + "k" * 36 + "…": ["Unknown field."],
            "_unknown": ["97 more unknown fields."],
        },
    }
    assert len(json.dumps(result)) <= app.config["JOB_RESULT_MAX_BYTES"]
    listing = client.get("/api/v1/jobs?limit=100", headers=headers)
    assert len(listing.data) < 2 * app.config["JOB_RESULT_MAX_BYTES"]


def test_a_state_over_the_bound_keeps_only_its_counts(app):
    with app.app_context():
        state = {"imported": 3, "note": "short", "errors": ["x" * 1000] * 100}
        assert jobs.bounded(state) == {"imported": 3, "note": "short", "truncated": True}
        assert jobs.bounded({"imported": 3, "errors": ["x"]}) == {"imported": 3, "errors": ["x"]}


# -- caps ------------------------------------------------------------------------------


class Unreadable(io.RawIOBase):
    """A request body of a million bytes that fails the request if anything reads it."""

    SIZE = 1_000_000

    def __init__(self):
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.SIZE}[whence]
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, _buffer):
        raise AssertionError("the body was read")


def test_unfinished_imports_per_user_are_capped_before_the_body_is_read(client, login, app):
    author = UserFactory()
    headers = login(author)
    assert app.config["IMPORT_MAX_UNFINISHED_PER_USER"] == 2
    first = upload(client, headers, jsonl(good(1))).get_json()["id"]
    second = upload(client, headers, jsonl(good(2))).get_json()["id"]
    refused = client.post(
        IMPORT,
        input_stream=Unreadable(),
        content_type="multipart/form-data; boundary=x",
        headers=headers,
    )
    assert refused.status_code == 429, refused.get_json()
    assert refused.mimetype == PROBLEM and int(refused.headers["Retry-After"]) > 0
    assert sorted(refused.get_json()["jobs"]) == sorted([first, second])
    assert count(Job) == 2
    jobs.run(first)
    assert upload(client, headers, jsonl(good(3))).status_code == 202


def test_the_cap_holds_when_another_import_was_committed_meanwhile(app):
    """The check before the body cannot see an import committed while this one streamed:
    the second check, under a lock, before the commit, does."""
    author = UserFactory()
    for i in range(2):
        imports.start(author.id, io.BytesIO(jsonl(good(i))), "p.jsonl", "", None, queue=False)
    with pytest.raises(TooManyRequests):
        imports.start(author.id, io.BytesIO(jsonl(good(9))), "p.jsonl", "", None, queue=False)
    assert (count(Job), count(JobFile), count(JobFileChunk)) == (2, 2, 2)


def test_an_upload_that_is_not_multipart_is_refused_after_authentication_first(client, login, app, monkeypatch):
    monkeypatch.setitem(app.config, "UPLOADS_IN_FLIGHT_MAX", 0)  # no upload slot free
    assert client.post(IMPORT, data=b"x", content_type="text/plain").status_code == 401
    response = client.post(IMPORT, data=b"x", content_type="text/plain", headers=login(UserFactory()))
    assert response.status_code == 415 and response.mimetype == PROBLEM  # not the 503 for slots
    assert upload(client, login(UserFactory()), jsonl(good(1))).status_code == 503


def test_without_redis_the_upload_slots_are_counted_in_each_process(app):
    down = create_app(
        {
            "APP_ENV": "test",
            "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
            "UPLOADS_IN_FLIGHT_MAX": 1,
        }
    )
    with down.test_request_context():
        with uploads.slot(), pytest.raises(ServiceUnavailable), uploads.slot():
            pass
        with uploads.slot():  # given back
            pass


def test_one_export_at_a_time_and_a_rate_per_user(client, login, app, monkeypatch):
    monkeypatch.setitem(app.config, "RATELIMIT_EXPORT_PER_USER", "3 per hour")
    headers = login(UserFactory())
    first = client.post(EXPORT, headers=headers).get_json()["id"]
    again = client.post(EXPORT, headers=headers)
    assert again.status_code == 409 and again.mimetype == PROBLEM
    assert again.get_json()["job"] == first and first in again.get_json()["detail"]
    assert count(Job) == 1
    jobs.run(first)
    assert client.get(f"/api/v1/jobs/{first}/result", headers=headers).status_code == 200
    jobs.run(client.post(EXPORT, headers=headers).get_json()["id"])
    assert client.get(f"/api/v1/jobs/{first}/result", headers=headers).status_code == 410  # the newer one replaced it
    limited = client.post(EXPORT, headers=headers)  # the fourth in the hour (the 409 counts)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert client.post(EXPORT, headers=login(UserFactory())).status_code == 202  # per user


def test_the_export_is_written_and_read_in_chunks(client, login, monkeypatch):
    from app.users import export

    monkeypatch.setattr(files, "CHUNK_BYTES", 512)
    monkeypatch.setattr(export, "CHUNK", 2)
    monkeypatch.setattr(export, "POSTS_CHUNK", 2)
    me = UserFactory()
    posts = PostFactory.create_batch(5, author=me)
    followers = [FollowFactory(followed_id=me.id).follower_id for _ in range(3)]
    following = [FollowFactory(follower_id=me.id).followed_id for _ in range(2)]
    headers = login(me)
    job = run_job(client, headers, client.post(EXPORT, headers=headers))
    assert job["result"] == {"posts": 5, "followers": 3, "following": 2}
    chunks = count(JobFileChunk, JobFileChunk.job_id == uuid.UUID(job["id"]))
    download = client.get(f"/api/v1/jobs/{job['id']}/result", headers=headers)
    assert chunks == -(-len(download.data) // 512) > 3
    assert int(download.headers["Content-Length"]) == len(download.data)
    document = download.get_json()
    assert list(document) == ["exported_at", "profile", "posts", "followers", "following"]
    assert [p["id"] for p in document["posts"]] == sorted(p.id for p in posts)
    assert [u["id"] for u in document["followers"]] == sorted(followers)
    assert [u["id"] for u in document["following"]] == sorted(following)


def test_old_results_and_failed_uploads_are_purged(client, login, app):
    from worker.tasks import purge_expired_results, purge_failed_uploads

    old_user, new_user = UserFactory(), UserFactory()
    old_headers, new_headers = login(old_user), login(new_user)
    old = run_job(client, old_headers, client.post(EXPORT, headers=old_headers))["id"]
    recent = run_job(client, new_headers, client.post(EXPORT, headers=new_headers))["id"]
    days = app.config["JOB_RESULT_RETENTION_DAYS"]
    db.session.execute(
        update(Job).where(Job.id == old).values(finished_at=datetime.now(UTC) - timedelta(days=days, hours=1))
    )
    failed = upload(client, old_headers, jsonl(good(1))).get_json()["id"]
    queued = upload(client, old_headers, jsonl(good(2))).get_json()["id"]
    db.session.execute(update(Job).where(Job.id == failed).values(status="failed"))
    db.session.commit()

    assert purge_expired_results.run() == 1
    assert purge_failed_uploads.run() == 1
    gone = client.get(f"/api/v1/jobs/{old}/result", headers=old_headers)
    assert gone.status_code == 410 and gone.mimetype == PROBLEM
    assert client.get(f"/api/v1/jobs/{old}", headers=old_headers).get_json()["status"] == "succeeded"
    assert client.get(f"/api/v1/jobs/{recent}/result", headers=new_headers).status_code == 200
    assert count(JobFileChunk, JobFileChunk.job_id == uuid.UUID(old)) == 0
    assert db.session.get(JobFile, (uuid.UUID(failed), "input")) is None
    assert stored(uuid.UUID(queued)) == jsonl(good(2))
    assert (purge_expired_results.run(), purge_failed_uploads.run()) == (0, 0)
    schedule = app.extensions["celery"].conf.beat_schedule
    assert {e["task"] for e in schedule.values()} >= {
        "worker.tasks.purge_expired_results",
        "worker.tasks.purge_failed_uploads",
    }


# -- memory, on real processes ---------------------------------------------------------
