"""Cached reads while large uploads arrive:
`python bench/uploads_under_load.py [UPLOADS] [MIB] [MIBPS]`.

It makes a fresh database `<name>_uploads_load` (dropped afterwards), starts gunicorn
with WEB_CONCURRENCY sync workers (4 unless set) and a Celery worker, reads
GET /api/v1/users/1 once to warm its cache, then sends UPLOADS (4) imports of MIB (64)
MiB each at once, from as many users, while a client reads that profile
READS_PER_SECOND times a second, on a schedule. It prints the reads' latency (p50, p95,
p99, max) during the uploads, then while the worker imports what was accepted, and each
upload's answer. An upload is sent a MiB at a time, at most MIBPS MiB/s each (0, the
default: as fast as loopback goes; a client on a slower link holds its web worker
longer), and stops when the server answers early (a refusal comes before the body is
read).
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
READS_PER_SECOND = 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_database(suffix: str) -> str:
    """An empty database `<DATABASE_URL's name>_<suffix>` (dropped first if it exists)."""
    from app.config import database_url

    base = make_url(database_url(os.environ["DATABASE_URL"]))
    url = base.set(database=f"{base.database}_{suffix}")
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{url.database}"'))
    admin.dispose()
    return url.render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    admin.dispose()


def users_and_tokens(db_url: str, count: int) -> list[str]:
    """`count` users (the first is user 1) and an access token for each."""
    from app.auth.tokens import issue_tokens
    from app.db import db
    from app.factory import create_app
    from app.models import AuthSession, User

    app = create_app({"SQLALCHEMY_DATABASE_URI": db_url})
    tokens = []
    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
        for i in range(count):
            name = f"load_{i}"
            # "!" is no argon2 hash: nobody can log in as these users
            user = User(username=name, email=f"{name}@example.com", password_hash="!", display_name=name)  # noqa: S106
            db.session.add(user)
            db.session.flush()
            session = AuthSession(id=uuid.uuid4(), user_id=user.id, expires_at=datetime.now(UTC) + timedelta(days=1))
            db.session.add(session)
            tokens.append(issue_tokens(user, session)["access_token"])
        db.session.commit()
        db.engine.dispose()
    return tokens


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def upload_body(size: int, index: int) -> tuple[str, bytes]:
    """A multipart body with a JSON Lines file of about `size` bytes, and its boundary."""
    line = json.dumps({"external_id": "x", "title": "Load", "body": "y" * 700})
    lines = size // (len(line) + 12)
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    content = "\n".join(line.replace('"x"', f'"{index}-{n:09d}"') for n in range(lines)).encode()
    return boundary, head + content + tail


def upload(port: int, token: str, boundary: str, body: bytes, results: list, index: int, mibps: float) -> None:
    """POST the body a MiB at a time; stop early if answered."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.putrequest("POST", "/api/v1/posts/import")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    sent = 0
    try:
        while sent < len(body):
            if select.select([conn.sock], [], [], 0)[0]:
                break  # answered before the whole body went: a refusal
            conn.sock.sendall(body[sent : sent + MIB])
            sent += MIB
            if mibps:
                time.sleep(max(0.0, started + sent / MIB / mibps - time.monotonic()))
    except OSError:
        pass  # refused and closed while sending: the answer may still be there to read
    try:
        response = conn.getresponse()
        status, answer = response.status, response.read()
    except OSError as exc:
        status, answer = f"connection error ({exc.__class__.__name__})", b"{}"
    results[index] = (status, min(sent, len(body)) / MIB, time.monotonic() - started, json.loads(answer or b"{}"))
    conn.close()


def unfinished(port: int, token: str, job_id: str) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["status"] in ("queued", "running")


def read_loop(port: int, stop: threading.Event, latencies: list) -> None:
    """READS_PER_SECOND reads on a fixed schedule, each timed from when it was due: a read
    that waits for a free web worker counts its wait (no coordinated omission)."""

    def read(due: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/api/v1/users/1")
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 200, response.status
        latencies.append((time.perf_counter() - due) * 1000)

    with ThreadPoolExecutor(max_workers=32) as pool:
        start = time.perf_counter()
        n = 0
        while not stop.is_set():
            due = start + n / READS_PER_SECOND
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(read, due)
            n += 1


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main(uploads: int, mib: int, mibps: float) -> None:
    db_url = fresh_database("uploads_load")
    tokens = users_and_tokens(db_url, uploads)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": os.environ.get("WEB_CONCURRENCY", "4"),
        "LOG_LEVEL": "WARNING",
    }
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool=solo", "--loglevel=WARNING"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        time.sleep(3)  # every worker booted
        idle: list[float] = []
        stop = threading.Event()
        reader = threading.Thread(target=read_loop, args=(port, stop, idle))
        reader.start()  # the first read fills the cache; 3 s of reads with nothing else
        time.sleep(3)
        stop.set()
        reader.join()
        busy: list[float] = []
        stop = threading.Event()
        reader = threading.Thread(target=read_loop, args=(port, stop, busy))
        results: list = [None] * uploads
        # bodies built beforehand: building one holds the GIL, and would delay the reads
        bodies = [upload_body(mib * MIB, i) for i in range(uploads)]
        senders = [
            threading.Thread(target=upload, args=(port, tokens[i], *bodies[i], results, i, mibps))
            for i in range(uploads)
        ]
        reader.start()
        started = time.monotonic()
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        seconds = time.monotonic() - started
        stop.set()
        reader.join()
        # then reads while the worker imports what was accepted
        importing: list[float] = []
        stop = threading.Event()
        reader = threading.Thread(target=read_loop, args=(port, stop, importing))
        reader.start()
        started = time.monotonic()
        accepted = [(tokens[i], r[3]["id"]) for i, r in enumerate(results) if r[0] == 202]
        while any(unfinished(port, token, job_id) for token, job_id in accepted):
            time.sleep(0.5)
        import_seconds = time.monotonic() - started
        stop.set()
        reader.join()
        pace = f"at {mibps:g} MiB/s each" if mibps else "at full speed"
        print(f"WEB_CONCURRENCY={env['WEB_CONCURRENCY']}, {uploads} uploads of {mib} MiB {pace}, {os.cpu_count()} CPUs")
        for name, values in (
            ("idle", idle[1:]),
            (f"during the uploads ({seconds:.1f} s)", busy),
            (f"while the worker imports them ({import_seconds:.1f} s)", importing),
        ):
            print(
                f"GET /api/v1/users/1 {name}: {len(values)} reads, p50 {statistics.median(values):.1f} ms, "
                f"p95 {percentile(values, 0.95):.1f} ms, p99 {percentile(values, 0.99):.1f} ms, "
                f"max {max(values):.1f} ms"
            )
        for i, (status, sent, took, answer) in enumerate(results):
            print(f"upload {i}: {status} after {sent:.0f} MiB sent, {took:.2f} s {answer.get('detail', '')}")
    finally:
        for process in (web, worker):
            os.killpg(process.pid, 15)
            process.wait(timeout=30)
        drop_database(db_url)


if __name__ == "__main__":
    args = sys.argv[1:] + [None] * 3
    main(int(args[0] or 4), int(args[1] or 64), float(args[2] or 0))
