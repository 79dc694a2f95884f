"""`make bench`: load on loopback against gunicorn, PostgreSQL and Redis, per endpoint.

It makes (once) a bench database `<name>_bench` seeded with 1,000 users, 20 posts each
and 20 follows each, starts the service and a bare Flask endpoint (the ceiling) under the
same gunicorn settings, drives each scenario with wrk (BENCH_CONNECTIONS connections,
BENCH_SECONDS each, reads after BENCH_WARMUP_SECONDS of unmeasured load), and writes a
Markdown table and a latency chart to bench/results/.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
# unmeasured load first: worker processes, pools and per-process copies warm up
WARMUP_SECONDS = int(os.environ.get("BENCH_WARMUP_SECONDS", "3"))
USERS, POSTS, FOLLOWS = 1000, 20, 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_database() -> str:
    from app.config import database_url

    base = make_url(database_url(os.environ["DATABASE_URL"]))
    url = base.set(database=f"{base.database}_bench")
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": url.database}):
            conn.execute(text(f'CREATE DATABASE "{url.database}"'))
    admin.dispose()
    return url.render_as_string(hide_password=False)


def flask(env: dict, *args: str) -> str:
    return subprocess.run(
        [str(Path(sys.executable).parent / "flask"), *args], env=env, check=True, capture_output=True, text=True
    ).stdout


def seed(env: dict) -> str:
    """Seed once; the users' shared password is kept beside the results."""
    from app.config import database_url

    password_file = RESULTS / ".bench-password"
    engine = create_engine(database_url(env["DATABASE_URL"]))
    try:
        with engine.connect() as conn:
            users = conn.scalar(text("SELECT count(*) FROM users"))
            if users >= USERS and password_file.exists():
                return password_file.read_text().strip()
            if users:  # seeded before, but its password is lost: start the bench data over
                conn.execute(text("TRUNCATE users, revoked_tokens CASCADE"))
                conn.commit()
    finally:
        engine.dispose()
    print(f"seeding {USERS} users, {USERS * POSTS} posts, {USERS * FOLLOWS} follows ...", flush=True)
    output = flask(env, "seed", "--users", str(USERS), "--posts", str(POSTS), "--follows", str(FOLLOWS))
    password = re.search(r"password=(\S+)", output).group(1)
    password_file.write_text(password)
    return password


BENCH_POST_TITLE = "Bench post"


def restore_seeded_state(env: dict) -> None:
    """Every run starts from the seeded data: the posts, sessions and revocations earlier
    runs wrote are removed (with the counts they moved), and the tables are vacuumed and
    analyzed, so autovacuum does not wake up in the middle of a measurement."""
    from app.config import database_url

    engine = create_engine(database_url(env["DATABASE_URL"]), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            authors = conn.scalars(
                text("DELETE FROM posts WHERE title = :t RETURNING author_id"), {"t": BENCH_POST_TITLE}
            ).all()
            conn.execute(
                text(
                    "UPDATE users SET post_count = (SELECT count(*) FROM posts WHERE author_id = users.id)"
                    " WHERE id = ANY(:ids)"
                ),
                {"ids": sorted(set(authors))},
            )
            conn.execute(text("TRUNCATE sessions, revoked_tokens"))
            conn.execute(text("VACUUM ANALYZE"))
    finally:
        engine.dispose()


def start(env: dict, app_path: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), app_path],
        env={**env, "HOST": "127.0.0.1", "PORT": str(port)},
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{base}/healthz" if "wsgi" in app_path else f"{base}/ping", timeout=1)
            return process, base
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{app_path} did not start; see {log}")


def call(method: str, url: str, body: dict | None = None, token: str | None = None) -> dict:
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body else None,
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def wrk(base: str, scenario: dict, seconds: int = SECONDS) -> dict:
    env = {
        **os.environ,
        "BENCH_METHOD": scenario.get("method", "GET"),
        "BENCH_PATH": scenario["path"],
        "BENCH_BODY": scenario.get("body", ""),
        "BENCH_TOKEN": scenario.get("token", ""),
        "BENCH_MAX_ID": str(scenario.get("max_id", 1)),
    }
    output = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(ROOT / "bench" / "wrk.lua"),
            base,
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def main() -> int:
    if not shutil.which("wrk"):
        print("make bench needs wrk: `apt-get install wrk` (Debian/Ubuntu) or `brew install wrk`")
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    redis_url = os.environ["REDIS_URL"].rsplit("/", 1)[0] + "/14"
    env = {
        **os.environ,
        "FLASK_APP": "wsgi:app",
        "APP_ENV": "production",
        "DATABASE_URL": bench_database(),
        "REDIS_URL": redis_url,
        "SECRET_KEY": secrets.token_urlsafe(48),
        "JWT_SECRET_KEY": secrets.token_urlsafe(48),
        "RATELIMIT_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
    }
    flask(env, "db", "upgrade")
    password = seed(env)
    restore_seeded_state(env)
    import redis

    redis.Redis.from_url(redis_url).flushdb()  # a cold cache and fresh counters
    app_process, app_base = start(env, "wsgi:app", RESULTS / "app.log")
    ceiling_process, ceiling_base = start(env, "bench.ceiling:app", RESULTS / "ceiling.log")
    # as deployed: a worker (it rebuilds the revocation mirror the web asks for)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool=solo", "--loglevel=WARNING"],
        env=env,
        cwd=ROOT,
        stdout=(RESULTS / "worker.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        token = call("POST", f"{app_base}/api/v1/auth/login", {"login": "user2", "password": password})["access_token"]
        for user_id in range(1, USERS + 1):  # fill the cache before measuring it
            urllib.request.urlopen(f"{app_base}/api/v1/users/{user_id}", timeout=10).read()
        call("GET", f"{app_base}/api/v1/feed", token=token)  # asks the worker for the revocation mirror
        wait_for_revocation_mirror(redis_url)
        scenarios = [
            {"name": "ceiling: bare Flask JSON", "base": ceiling_base, "path": "/ping"},
            {"name": "GET /users/{id} (cached)", "path": "/api/v1/users/{id}", "max_id": USERS},
            {
                "name": f"GET /posts/{{id}} (random of {USERS * POSTS:,})",
                "path": "/api/v1/posts/{id}",
                "max_id": USERS * POSTS,
            },
            {"name": "GET /posts (page of 20)", "path": "/api/v1/posts?limit=20"},
            {"name": "GET /feed", "path": "/api/v1/feed?limit=20", "token": token},
            {"name": "GET /users?include=posts", "path": "/api/v1/users?include=posts&limit=20"},
            {
                "name": "POST /posts",
                "method": "POST",
                "path": "/api/v1/posts",
                "token": token,
                "body": json.dumps({"title": BENCH_POST_TITLE, "body": "Written under load."}),
                "write": True,
            },
            {
                "name": "POST /auth/login",
                "method": "POST",
                "path": "/api/v1/auth/login",
                "write": True,
                "body": json.dumps({"login": "user3", "password": password}),
            },
        ]
        results = []
        for scenario in scenarios:
            if WARMUP_SECONDS and not scenario.get("write"):
                wrk(scenario.get("base", app_base), scenario, WARMUP_SECONDS)
            server = ceiling_process if "base" in scenario else app_process
            before = cpu_used(server.pid)
            result = wrk(scenario.get("base", app_base), scenario)
            result["cpu_us"] = cpu_per_request(before, cpu_used(server.pid), result["requests"])
            results.append({**scenario, **result})
            print(
                f"{scenario['name']:<36} {result['rps']:8.0f} req/s  p50 {result['p50'] / 1000:6.1f} ms  "
                f"p95 {result['p95'] / 1000:6.1f} ms  p99 {result['p99'] / 1000:6.1f} ms  "
                f"errors {result['socket_errors'] + result['status_errors']}",
                flush=True,
            )
        hit_rate = cache_hit_rate(redis_url)
    finally:
        for process in (app_process, ceiling_process, worker):
            process.terminate()
            process.wait(timeout=30)
    report(results, hit_rate)
    return 0


def wait_for_revocation_mirror(redis_url: str, seconds: float = 60) -> None:
    """Until the worker has mirrored the revocations, every authenticated request also
    asks PostgreSQL: measure the steady state, not the first seconds after a start."""
    import redis

    from app.auth.revocation import READY

    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + seconds
    while not client.exists(READY):
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not build the revocation mirror; see bench/results/worker.log")
        time.sleep(0.2)


def cpu_used(server_pid: int) -> dict[str, float] | None:
    """CPU seconds (user + system) used so far by the gunicorn server under test (master
    and workers), and by every `postgres` and `redis-server` process on this machine,
    read from /proc; None where there is no /proc. wrk's own CPU is not counted."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    used = {"web": 0.0, "PostgreSQL": 0.0, "Redis": 0.0}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, ..., utime (11), stime (12)
        if server_pid in (int(entry.name), int(fields[1])):
            group = "web"
        elif name == "postgres":
            group = "PostgreSQL"
        elif name.startswith("redis-server"):
            group = "Redis"
        else:
            continue
        used[group] += (int(fields[11]) + int(fields[12])) / tick
    return used


def cpu_per_request(before: dict | None, after: dict | None, requests: int) -> dict[str, float] | None:
    """Microseconds of CPU per request in each group between two cpu_used() readings (a
    worker that exits between them takes its share with it: rare, and only low)."""
    if before is None or after is None or not requests:
        return None
    return {group: (after[group] - before[group]) / requests * 1e6 for group in after}


def cache_hit_rate(redis_url: str) -> float | None:
    import redis

    hits, misses = (int(v or 0) for v in redis.Redis.from_url(redis_url).mget("cache:stats:hits", "cache:stats:misses"))
    return hits / (hits + misses) if hits + misses else None


def report(results: list[dict], hit_rate: float | None) -> None:
    ceiling = results[0]["rps"]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# make bench, {stamp}",
        "",
        f"{CONNECTIONS} connections, {SECONDS} s per endpoint after {WARMUP_SECONDS} s unmeasured (reads), "
        f"wrk on loopback; {os.cpu_count()} cores; "
        f"gunicorn with WEB_CONCURRENCY={os.environ.get('WEB_CONCURRENCY', 'default')}; "
        f"{USERS} users, {USERS * POSTS} posts, {USERS * FOLLOWS} follows.",
        "",
        "| endpoint | req/s | vs ceiling | p50 ms | p95 ms | p99 ms | errors | CPU µs/request: web / PG / Redis |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        errors = r["socket_errors"] + r["status_errors"]
        cpu = " / ".join(f"{v:,.0f}" for v in r["cpu_us"].values()) if r["cpu_us"] else "n/a"
        lines.append(
            f"| {r['name']} | {r['rps']:.0f} | {r['rps'] / ceiling:.0%} | {r['p50'] / 1000:.1f} | "
            f"{r['p95'] / 1000:.1f} | {r['p99'] / 1000:.1f} | {errors} | {cpu} |"
        )
    reads = [r for r in results[1:] if not r.get("write")]
    cached = results[1]
    lines += [
        "",
        f"- zero errors: {'yes' if all(r['socket_errors'] + r['status_errors'] == 0 for r in results) else 'NO'}",
        f"- p95 under 50 ms for every read: {'yes' if all(r['p95'] < 50_000 for r in reads) else 'NO'}",
        f"- cached GET /users/{{id}} at least 60 % of the ceiling: {cached['rps'] / ceiling:.0%}",
        f"- cache hit rate over the run: {hit_rate:.1%}" if hit_rate is not None else "- cache hit rate: n/a",
    ]
    text_report = "\n".join(lines) + "\n"
    (RESULTS / "latest.md").write_text(text_report)
    chart(results, RESULTS / "latest.png")
    print("\n" + text_report + f"\nwritten: {RESULTS / 'latest.md'}, {RESULTS / 'latest.png'}")


def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in results]
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.27
    for offset, key in ((-width, "p50"), (0, "p95"), (width, "p99")):
        ax.bar([i + offset for i in range(len(names))], [r[key] / 1000 for r in results], width, label=key)
    ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="50 ms (p95 bar for reads)")
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
    ax.set_ylabel("latency, ms (log)")
    ax.set_yscale("log")
    ax.set_title(f"Latency per endpoint at {CONNECTIONS} connections")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
