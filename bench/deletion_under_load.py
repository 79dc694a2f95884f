"""Cached reads while an account with many posts is deleted:
`python bench/deletion_under_load.py [POSTS] [FOLLOWERS] [newest]`.

It makes a fresh database `<name>_deletion_load` (dropped afterwards) with a reader's
account (user 1, with a post of its own) and the account to delete, which has POSTS
(100,000) posts, one every 10 s back from now, and FOLLOWERS (1,000) followers, who
have written 20 posts each, spread over the same time. With `newest`, the account's
posts are instead all newer than anyone else's: the worst case for the first page of
/posts, which skips the posts of hidden accounts until the job has deleted them. It starts gunicorn with
WEB_CONCURRENCY sync workers (2 unless set) and a Celery worker, warms the cache, and
reads on a schedule (READS_PER_SECOND, cycling through a profile, a post, the first page
of /posts and a follower's feed) for 5 s idle, then while DELETE /api/v1/users/me and
the deletion job run to the end. It prints the reads' latency (p50, p95, p99, max) in
each phase, the DELETE's time and the job's.
"""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from uploads_under_load import drop_database, free_port, fresh_database, percentile, wait_ready  # noqa: E402

READS_PER_SECOND = 100


def load(db_url: str, posts: int, followers: int, newest: bool) -> tuple[str, str, int]:
    """The reader (user 1), the account to delete with its posts and followers; returns a
    follower's token, the doomed account's fresh token and the reader's post id."""
    from flask_migrate import upgrade

    from app.auth.tokens import issue_tokens
    from app.db import db
    from app.factory import create_app
    from app.models import AuthSession, User

    app = create_app({"SQLALCHEMY_DATABASE_URI": db_url})
    with app.app_context():
        upgrade()
        sql = [
            # "!" is no argon2 hash: nobody can log in as these users
            "INSERT INTO users (username, email, password_hash, display_name, follower_count, post_count)"
            " SELECT 'u' || n, 'u' || n || '@example.com', '!', 'u' || n, 0, 0 FROM generate_series(1, 2) n",
            "INSERT INTO posts (author_id, title, body, created_at)"
            " VALUES (1, 'Mine', 'A post of the reader.', now() - interval '1 day')",
            "INSERT INTO posts (author_id, title, body, created_at) SELECT 2, 'Post ' || n,"
            " repeat('words about postgres and redis ', 20), now() - n * interval '10 seconds'"
            " FROM generate_series(1, :posts) n",
            "UPDATE users SET post_count = (SELECT count(*) FROM posts WHERE author_id = users.id)",
            "INSERT INTO users (username, email, password_hash, display_name, following_count)"
            " SELECT 'f' || n, 'f' || n || '@example.com', '!', 'f' || n, 1 FROM generate_series(1, :followers) n",
            "INSERT INTO follows (follower_id, followed_id) SELECT id, 2 FROM users WHERE username LIKE 'f%'",
            "UPDATE users SET follower_count = :followers WHERE id = 2",
            # the followers' own posts, among the account's (unless it has all the newest)
            "INSERT INTO posts (author_id, title, body, created_at) SELECT u.id, 'Theirs ' || n, 'Text.',"
            " now() - (CASE WHEN :newest THEN :posts * 10 ELSE 0 END + (u.id * 20 + n) * 48) * interval '1 second'"
            " FROM users u, generate_series(1, 20) n WHERE u.username LIKE 'f%'",
            "UPDATE users SET post_count = 20 WHERE username LIKE 'f%'",
            "VACUUM ANALYZE",
        ]
        db.session.execute(text("SET statement_timeout = 0"))  # loading takes long on a busy machine
        for statement in sql:
            if statement == "VACUUM ANALYZE":
                db.session.commit()
                with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(text(statement))
                continue
            db.session.execute(text(statement), {"posts": posts, "followers": followers, "newest": newest})
        db.session.commit()
        tokens = []
        for user_id, fresh in ((3, False), (2, True)):
            user = db.session.get(User, user_id)
            session = AuthSession(id=uuid.uuid4(), user_id=user.id, expires_at=datetime.now(UTC) + timedelta(days=1))
            db.session.add(session)
            tokens.append(issue_tokens(user, session, fresh=fresh)["access_token"])
        db.session.commit()
        post_id = db.session.scalar(text("SELECT id FROM posts WHERE author_id = 1"))
        db.engine.dispose()
    return tokens[0], tokens[1], post_id


def request(port: int, method: str, path: str, token: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def read_loop(port: int, paths: list[tuple[str, str | None]], stop: threading.Event, latencies: list) -> None:
    """Reads on a fixed schedule, each timed from when it was due (no coordinated omission)."""

    def read(due: float, path: str, token: str | None) -> None:
        status, _ = request(port, "GET", path, token)
        assert status == 200, (path, status)
        latencies.append((due, (time.perf_counter() - due) * 1000, path))

    with ThreadPoolExecutor(max_workers=32) as pool:
        start = time.perf_counter()
        n = 0
        while not stop.is_set():
            due = start + n / READS_PER_SECOND
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(read, due, *paths[n % len(paths)])
            n += 1


def job_finished(db_url: str) -> tuple[bool, str | None]:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        status = conn.execute(text("SELECT status FROM jobs WHERE kind = 'delete_user'")).scalar()
    engine.dispose()
    return status in ("succeeded", "failed"), status


def main(posts: int, followers: int, newest: bool) -> None:
    db_url = fresh_database("deletion_load")
    follower_token, doomed_token, post_id = load(db_url, posts, followers, newest)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": os.environ.get("WEB_CONCURRENCY", "2"),
        "LOG_LEVEL": "WARNING",
    }
    started_processes = [
        subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        for command in (
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool=solo", "--loglevel=WARNING"],
        )
    ]
    paths = [
        ("/api/v1/users/1", None),
        (f"/api/v1/posts/{post_id}", None),
        ("/api/v1/posts?limit=20", None),
        ("/api/v1/feed?limit=20", follower_token),
    ]
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        time.sleep(3)  # every worker booted
        for path, token in paths * 4:  # warm the cache and each web worker's copies
            request(port, "GET", path, token)
        idle: list[float] = []
        stop = threading.Event()
        reader = threading.Thread(target=read_loop, args=(port, paths, stop, idle))
        reader.start()
        time.sleep(5)
        stop.set()
        reader.join()
        busy: list[float] = []
        stop = threading.Event()
        reader = threading.Thread(target=read_loop, args=(port, paths, stop, busy))
        reader.start()
        started = time.perf_counter()
        status, body = request(port, "DELETE", "/api/v1/users/me", doomed_token)
        answered = time.perf_counter()
        assert status == 204, (status, body)
        while not (outcome := job_finished(db_url))[0]:
            time.sleep(0.5)
        finished = time.perf_counter()
        stop.set()
        reader.join()
        delete_ms, job_seconds = (answered - started) * 1000, finished - started
        during_delete = [ms for due, ms, _ in busy if due < answered]
        during_job = [ms for due, ms, _ in busy if answered <= due < finished]
        shape = "all newer than anyone else's" if newest else "among the others'"
        print(
            f"WEB_CONCURRENCY={env['WEB_CONCURRENCY']}, {posts} posts ({shape}), {followers} followers, "
            f"{os.cpu_count()} CPUs"
        )
        print(f"DELETE /api/v1/users/me: {delete_ms:.0f} ms; the job {outcome[1]} in {job_seconds:.1f} s")
        phases = (
            ("idle", [ms for _, ms, _ in idle]),
            ("while DELETE answers", during_delete),
            ("while the job runs", during_job),
            ("from DELETE to the job's end", during_delete + during_job),
        )
        for name, values in phases:
            if not values:
                continue
            print(
                f"cached reads {name}: {len(values)} reads, p50 {statistics.median(values):.1f} ms, "
                f"p95 {percentile(values, 0.95):.1f} ms, p99 {percentile(values, 0.99):.1f} ms, "
                f"max {max(values):.1f} ms"
            )
        for path, _ in paths:
            values = [ms for _, ms, p in busy if p == path]
            print(f"  {path} from DELETE to the job's end: p95 {percentile(values, 0.95):.1f} ms")
    finally:
        for process in started_processes:
            os.killpg(process.pid, 15)
            process.wait(timeout=30)
        drop_database(db_url)


if __name__ == "__main__":
    args = sys.argv[1:] + [None] * 3
    main(int(args[0] or 100_000), int(args[1] or 1000), args[2] == "newest")
