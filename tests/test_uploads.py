"""Uploads and jobs with bounded cost: uploads stored and read in chunks, bad lines
reported plainly, small job reports, caps on unfinished imports, on uploads in flight
and on exports, and the purges of old files. Memory is measured on real processes."""

from __future__ import annotations

import io
import json
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from app import create_app, uploads
from app.api import SURROGATE_MESSAGE
from app.errors import ServiceUnavailable, TooManyRequests, ValidationFailed
from app.extensions import db
from app.jobs import files
from app.jobs import service as jobs
from app.models import Job, JobFile, JobFileChunk, JobKind, Post
from app.posts import imports
from tests.conftest import open_session
from tests.factories import FollowFactory, PostFactory, UserFactory
from tests.processes import Web, Worker, free_port, http, service_env
from tests.test_jobs import IMPORT, jsonl, posts_of, run_job, upload

PROBLEM = "application/problem+json"


def good(i: int) -> dict:
    return {"external_id": f"g{i}", "title": f"Good {i}", "body": "Fine."}


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
    assert "SECRET" not in json.dumps(job) and "777" not in json.dumps(job)
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


def _held_upload(port: int, token: str, content: bytes) -> tuple[socket.socket, bytes]:
    """An upload whose headers and first bytes are sent; the rest is returned, unsent."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(_request_head(token, boundary, len(body)) + body[:200])
    return sock, body[200:]


def _request_head(token: str, boundary: str, length: int) -> bytes:
    return (
        f"POST {IMPORT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _status_and_headers(sock: socket.socket) -> tuple[int, str]:
    response = b""
    while b"\r\n\r\n" not in response:
        data = sock.recv(65536)
        assert data, response
        response += data
    head = response.split(b"\r\n\r\n")[0].decode()
    return int(head.split()[1]), head


@pytest.mark.no_transaction
def test_uploads_in_flight_are_capped_per_host_before_the_body_is_read(app, committed, test_db_url, tmp_path):
    env = service_env(app, test_db_url, UPLOADS_IN_FLIGHT_MAX="2", IMPORT_MAX_UNFINISHED_PER_USER="10")
    web = Web(env, tmp_path / "web.log", workers=3).wait_ready()
    redis = app.extensions["redis"]
    try:
        with app.app_context():
            token = open_session(UserFactory())["access_token"]
        held = [_held_upload(web.port, token, jsonl(good(i))) for i in range(2)]
        deadline = time.monotonic() + 10
        while redis.zcard(uploads.KEY) < 2:
            assert time.monotonic() < deadline, web.log()
            time.sleep(0.02)
        # a third upload: its headers only, announcing 50 MB; the answer needs none of them
        third = socket.create_connection(("127.0.0.1", web.port), timeout=5)
        third.sendall(_request_head(token, "x", 50_000_000))
        status, head = _status_and_headers(third)
        assert status == 503 and "Retry-After: " in head and PROBLEM in head, head
        third.close()
        for sock, rest in held:
            sock.sendall(rest)
            assert _status_and_headers(sock)[0] == 202
            sock.close()
        assert redis.zcard(uploads.KEY) == 0
        status, _, body = http(
            "POST", web.url(IMPORT), headers={"Authorization": f"Bearer {token}"}, files={"file": ("p.jsonl", b"{}")}
        )
        assert status == 202, body
    finally:
        web.stop()


# -- exports -----------------------------------------------------------------------------

EXPORT = "/api/v1/users/me/export"


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

MIB = 1024 * 1024


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def _reset_peak(pid: int) -> int:
    """Start the peak (VmHWM) afresh at the current size; returns that size in KiB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _kib(pid, "VmRSS")


def _child_of(pid: int) -> int:
    (child,) = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(child)


def _big_file(size: int) -> bytes:
    """JSON Lines of posts with near the longest body, to `size` bytes. The body is mostly
    one long "word" (non-ASCII in it): full-text indexing skips it, which keeps this quick."""
    body = ("x" * 499 + "é") * 39
    lines, total = [], 0
    while True:
        line = json.dumps(
            {"external_id": f"big-{len(lines)}", "title": f"Big {len(lines)}", "body": f"{len(lines)} {body}"},
            ensure_ascii=False,
        ).encode()
        if total + len(line) + 1 > size:
            return b"\n".join(lines)
        lines.append(line)
        total += len(line) + 1


def _wait_for(app, job_id: str, worker: Worker, timeout: float = 120) -> Job:
    deadline = time.monotonic() + timeout
    with app.app_context():
        while True:
            db.session.expire_all()
            job = db.session.get(Job, uuid.UUID(job_id))
            if job.status in ("succeeded", "failed"):
                return job
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.1)


@pytest.mark.no_transaction
def test_a_64_mib_upload_and_its_export_stay_within_their_memory_bounds(app, committed, test_db_url, tmp_path):
    env = service_env(app, test_db_url)
    web = Web(env, tmp_path / "web.log", workers=1).wait_ready()
    worker = Worker(env, tmp_path / "worker.log").wait_ready()
    try:
        with app.app_context():
            user = UserFactory()
            user_id = user.id
            headers = {"Authorization": f"Bearer {open_session(user)['access_token']}"}
        web_pid, worker_pid = _child_of(web.process.pid), worker.process.pid
        # warm up both (every module imported, pools open) with a small import and export
        small = http("POST", web.url(IMPORT), headers=headers, files={"file": ("p.jsonl", jsonl(good(0)))})[2]
        assert _wait_for(app, small["id"], worker).status == "succeeded"
        warm = http("POST", web.url(EXPORT), headers=headers)[2]
        assert _wait_for(app, warm["id"], worker).status == "succeeded"

        content = _big_file(app.config["IMPORT_MAX_BYTES"] - 4096)
        web_before, worker_before = _reset_peak(web_pid), _reset_peak(worker_pid)
        status, _, job = http(
            "POST", web.url(IMPORT), headers=headers, files={"file": ("p.jsonl", content)}, timeout=60
        )
        assert status == 202, job
        web_growth = _kib(web_pid, "VmHWM") - web_before
        done = _wait_for(app, job["id"], worker)
        worker_growth = _kib(worker_pid, "VmHWM") - worker_before
        assert done.status == "succeeded" and done.result["imported"] == content.count(b"\n") + 1, done.result

        export_before = _reset_peak(worker_pid)
        export = http("POST", web.url(EXPORT), headers=headers)[2]
        assert _wait_for(app, export["id"], worker).status == "succeeded"
        export_growth = _kib(worker_pid, "VmHWM") - export_before
        with app.app_context():
            document_size = db.session.get(JobFile, (uuid.UUID(export["id"]), "result")).size
            assert db.session.scalar(select(func.count()).where(Post.author_id == user_id)) == content.count(b"\n") + 2
        print(
            f"\n{len(content) / MIB:.1f} MiB upload: web worker +{web_growth / 1024:.1f} MiB, "
            f"celery worker +{worker_growth / 1024:.1f} MiB; "
            f"{document_size / MIB:.1f} MiB export: celery worker +{export_growth / 1024:.1f} MiB"
        )
        assert web_growth < 32 * 1024, web_growth
        assert worker_growth < 100 * 1024, worker_growth
        assert export_growth < 100 * 1024, export_growth
    finally:
        web.stop()
        worker.stop()
