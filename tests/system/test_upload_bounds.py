"""Uploads with bounded cost on real processes: the host's cap on uploads in flight, and
the memory a 64 MiB upload and its export cost gunicorn and a Celery worker."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app import uploads
from app.db import db
from app.models import Job, JobFile, Post
from tests.support.factories import UserFactory
from tests.support.imports import EXPORT, IMPORT, PROBLEM, good, jsonl
from tests.support.processes import Web, Worker, http, service_env
from tests.support.sessions import open_session


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
