"""`make bench`: load on loopback against gunicorn, PostgreSQL and Redis, per endpoint.

It makes (once) a bench database `<name>_bench` seeded with 1,000 users, 20 posts each
and 20 follows each, starts the service and a bare Flask app (the ceiling, and the floors:
two endpoints' I/O alone, bench/ceiling.py) under the same gunicorn settings, drives
each scenario with wrk (BENCH_CONNECTIONS connections, BENCH_SECONDS each, reads after
BENCH_WARMUP_SECONDS of unmeasured load), BENCH_ROUNDS times in turn, and writes a
Markdown table of the medians, the verdict on each goal and a latency chart to
bench/results/.

Every write scenario changes state with each request: new posts; edits of posts each
connection holds alone, with the ETag it got back (no 412); follows of users not yet
followed, then unfollows of those same pairs; profile edits with a new bio each time.
The mixed scenario runs a login flood and cached reads at once, on separate connections.

The service uses Redis database BENCH_REDIS_DB (14) of REDIS_URL's
server, emptied at the start.

BENCH_AB=local_copies measures instead the cached reads of two services started side by
side on the same data, A with each process's copies of Redis keys (app/local_copies.py)
and B without (CACHE_LOCAL_MAX_BYTES=0), alternating A and B within each round, and
writes per endpoint the median and range of req/s of each, the gain of A over B, and
whether the ranges overlap, to bench/results/ab-local_copies.md.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
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
# every endpoint is measured this many times, in turn, and the table gives the median
# and the range: one short run on a shared machine is not to be trusted alone
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
# the ceiling is read again for this long after each endpoint (0: once a round only)
CEILING_SECONDS = int(os.environ.get("BENCH_CEILING_SECONDS", "3"))
USERS, POSTS, FOLLOWS = 1000, 20, 20
HOT_POSTS = 1000  # the posts read again and again (measured cached), as against all of them
WRITERS = 32  # users whose tokens the write scenarios use (user1 ...)
EDITED_POSTS = 2 * CONNECTIONS  # a pool per wrk thread at least twice its connections
MIXED_LOGIN_CONNECTIONS = 8  # of CONNECTIONS, in the mixed scenario; the rest read
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "14"))
# BENCH_ONLY: comma-separated starts of scenario names to run (all when unset)
ONLY = tuple(name for name in os.environ.get("BENCH_ONLY", "").split(",") if name)
THREADS = 2
AB = os.environ.get("BENCH_AB", "")


def bench_in_this_process() -> str:
    """Point this process at make bench's database and Redis database with production
    settings, random secrets and no rate limits (for the in-process measurements),
    migrate and seed them if need be; the seeded users' password."""
    os.environ.update(
        {
            "APP_ENV": "production",
            "DATABASE_URL": bench_database(),
            "REDIS_URL": os.environ["REDIS_URL"].rsplit("/", 1)[0] + f"/{REDIS_DB}",
            "SECRET_KEY": secrets.token_urlsafe(48),
            "JWT_SECRET_KEY": secrets.token_urlsafe(48),
            "RATELIMIT_ENABLED": "false",
            "LOG_LEVEL": "WARNING",
        }
    )
    subprocess_env = {**os.environ, "FLASK_APP": "wsgi:app"}
    subprocess_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    flask(subprocess_env, "db", "upgrade")
    return seed(subprocess_env)


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
    """Seed once; the users' shared password is kept beside the results, with the number
    of follows seeded. A data set whose follows are not that number is seeded again: a
    run stopped between its follows and its unfollows leaves its pairs followed, which
    the next runs would otherwise measure on (more followers to notify per post, readers
    who follow everyone)."""
    from app.config import database_url

    password_file, follows_file = RESULTS / ".bench-password", RESULTS / ".bench-follows"
    engine = create_engine(database_url(env["DATABASE_URL"]))
    count_follows = text("SELECT count(*) FROM follows")
    try:
        with engine.connect() as conn:
            users = conn.scalar(text("SELECT count(*) FROM users"))
            follows = conn.scalar(count_follows)
            seeded_follows = follows_file.read_text().strip() if follows_file.exists() else None
            if users >= USERS and password_file.exists() and seeded_follows == str(follows):
                return password_file.read_text().strip()
            if users:  # its password or its follows are not the seed's: start the bench data over
                conn.execute(text("TRUNCATE users, revoked_tokens RESTART IDENTITY CASCADE"))
                conn.commit()
        print(f"seeding {USERS} users, {USERS * POSTS} posts, {USERS * FOLLOWS} follows ...", flush=True)
        output = flask(env, "seed", "--users", str(USERS), "--posts", str(POSTS), "--follows", str(FOLLOWS))
        with engine.connect() as conn:
            follows_file.write_text(str(conn.scalar(count_follows)))
    finally:
        engine.dispose()
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


def start_wrk(base: str, scenario: dict, seconds: int = SECONDS, connections: int = CONNECTIONS) -> subprocess.Popen:
    env = {
        **os.environ,
        "BENCH_METHOD": scenario.get("method", "GET"),
        "BENCH_PATH": scenario["path"],
        "BENCH_BODY": scenario.get("body", ""),
        "BENCH_TOKEN": scenario.get("token", ""),
        "BENCH_MAX_ID": str(scenario.get("max_id", 1)),
        "BENCH_MODE": scenario.get("mode", ""),
        "BENCH_ITEMS": str(scenario.get("items", "")),
        "BENCH_THREADS": str(THREADS),
        "BENCH_RETRY_AFTER": "1" if scenario.get("retry_after") else "",
    }
    return subprocess.Popen(
        [
            "wrk",
            f"-t{THREADS}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(ROOT / "bench" / "wrk.lua"),
            base,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wrk_result(process: subprocess.Popen) -> dict:
    output, errors = process.communicate()
    if process.returncode:
        raise RuntimeError(f"wrk failed: {errors.strip()}")
    result = json.loads(output.strip().splitlines()[-1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    answered = result["requests"] - result["status_errors"]  # a 503 a login flood is shed with is not a login
    result["answered_rps"] = answered / (result["duration_us"] / 1e6)
    return result


def wrk(base: str, scenario: dict, seconds: int = SECONDS) -> dict:
    return wrk_result(start_wrk(base, scenario, seconds))


def main() -> int:
    if not shutil.which("wrk"):
        print("make bench needs wrk: `apt-get install wrk` (Debian/Ubuntu) or `brew install wrk`")
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    redis_url = os.environ["REDIS_URL"].rsplit("/", 1)[0] + f"/{REDIS_DB}"
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
    machine = f"{cpu_model()}, {os.cpu_count()} cores, a 10-million-step Python loop in {python_speed():.2f} s"
    flask(env, "db", "upgrade")
    password = seed(env)
    restore_seeded_state(env)
    import redis

    from app.cache import profile_key

    redis.Redis.from_url(redis_url).flushdb()  # a cold cache and fresh counters
    if AB:
        return ab(env, redis_url, password, machine)
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
        call("GET", f"{app_base}/api/v1/feed", token=token)  # asks the worker for the revocation mirror
        wait_for_revocation_mirror(redis_url)
        writes = WriteScenarios(env, app_base, password)
        ceiling = {"name": CEILING, "base": ceiling_base, "path": "/ping"}
        scenarios = [
            ceiling,
            # the I/O of two endpoints alone, with raw drivers (bench/ceiling.py): what
            # this stack can reach at best for a cache miss and for a post
            {"name": FLOOR_MISS, "base": ceiling_base, "path": "/floor/users/{id}", "max_id": USERS},
            {
                "name": FLOOR_POST,
                "base": ceiling_base,
                "method": "POST",
                "path": "/floor/posts",
                "body": json.dumps({"title": BENCH_POST_TITLE, "body": "Written under load."}),
                "write": True,
            },
            {"name": "GET /users/{id} (cached)", "path": "/api/v1/users/{id}", "max_id": USERS, "fill": True},
            {
                "name": f"GET /posts/{{id}} (cached, random of {HOT_POSTS:,})",
                "path": "/api/v1/posts/{id}",
                "max_id": HOT_POSTS,
                "fill": True,
            },
            {
                "name": f"GET /posts/{{id}} (random of {USERS * POSTS:,})",
                "path": "/api/v1/posts/{id}",
                "max_id": USERS * POSTS,
                "cold": "post:v1:",  # mostly cache misses: about 5,000 requests over 20,000 posts
            },
            {"name": "GET /posts (page of 20)", "path": "/api/v1/posts?limit=20"},
            {"name": "GET /feed", "path": "/api/v1/feed?limit=20", "token": token},
            {"name": "GET /users?include=posts", "path": "/api/v1/users?include=posts&limit=20"},
            {
                "name": "GET /users/{id} (uncached)",
                "path": "/api/v1/users/{id}",
                "max_id": USERS,
                # every profile's tombstone kept: each read is a miss whose cache fill is refused
                "uncached": True,
                # and gone after it, so the next round's cached reads are not misses too
                "after": lambda: hold_misses(redis_url, profile_key(""), USERS, release=True),
            },
            {
                "name": "POST /posts",
                "method": "POST",
                "path": "/api/v1/posts",
                "token": token,
                "body": json.dumps({"title": BENCH_POST_TITLE, "body": "Written under load."}),
                "write": True,
            },
            {
                # the same, each request by the next of WRITERS authors: no author's row
                # (its post counter) is a hot spot that every request waits for
                "name": f"POST /posts ({WRITERS} authors)",
                "method": "POST",
                "path": "/api/v1/posts",
                "mode": "rotate",
                "items": writes.tokens,
                "body": json.dumps({"title": BENCH_POST_TITLE, "body": "Written under load, {n}."}),
                "write": True,
            },
            {
                "name": "PATCH /posts/{id}",
                "method": "PATCH",
                "path": "/api/v1/posts/{id}",
                "mode": "edit",
                "items": writes.posts_to_edit,
                "prepare": writes.fetch_etags,
                "write": True,
            },
            {
                "name": "PUT /users/{id}/follow",
                "method": "PUT",
                "path": "/api/v1/users/{id}/follow",
                "mode": "sequence",
                "items": writes.pairs,
                "prepare": writes.unfollow_all_pairs,
                "after": writes.unfollow_all_pairs,  # also when the unfollows are not run
                "write": True,
            },
            {
                "name": "DELETE /users/{id}/follow",
                "method": "DELETE",
                "path": "/api/v1/users/{id}/follow",
                "mode": "sequence",
                "items": writes.pairs,
                "prepare": writes.follow_all_pairs,
                "after": writes.unfollow_all_pairs,
                "write": True,
            },
            {
                "name": "PATCH /users/me",
                "method": "PATCH",
                "path": "/api/v1/users/me",
                "mode": "rotate",
                "items": writes.tokens,
                "body": json.dumps({"bio": "Edited under load, {n}."}),
                "write": True,
            },
            {
                "name": "POST /auth/login",
                "method": "POST",
                "path": "/api/v1/auth/login",
                "write": True,
                "body": json.dumps({"login": "user3", "password": password}),
                "retry_after": True,
            },
            {
                "name": f"mixed: POST /auth/login ({MIXED_LOGIN_CONNECTIONS} connections)",
                "method": "POST",
                "path": "/api/v1/auth/login",
                "write": True,
                "body": json.dumps({"login": "user3", "password": password}),
                "retry_after": True,
                "beside": {
                    "name": f"mixed: GET /users/{{id}} (cached, {CONNECTIONS - MIXED_LOGIN_CONNECTIONS} connections)",
                    "path": "/api/v1/users/{id}",
                    "max_id": USERS,
                    "fill": True,
                },
            },
        ]
        if ONLY:  # a quicker run of some scenarios while working on them (the ceiling stays)
            bounded = {FLOORS[name] for name in FLOORS if name.startswith(ONLY)}  # a floor with its endpoint
            scenarios = [s for s in scenarios if s["name"] in {CEILING, *bounded} or s["name"].startswith(ONLY)]
        scenarios += [scenario["beside"] for scenario in scenarios if "beside" in scenario]
        runs = {scenario["name"]: [] for scenario in scenarios}
        besides = [scenario["beside"] for scenario in scenarios if "beside" in scenario]
        ceiling_readings = []  # the short ones between endpoints
        for round_number in range(1, ROUNDS + 1):
            print(f"round {round_number} of {ROUNDS}", flush=True)
            for scenario in scenarios:
                if scenario in besides:  # measured with the scenario it runs beside
                    continue
                beside = scenario.get("beside")
                for prepared in filter(None, (scenario, beside)):
                    prepare_cache(app_base, redis_url, prepared)
                if WARMUP_SECONDS and not scenario.get("write"):
                    wrk(scenario.get("base", app_base), scenario, WARMUP_SECONDS)
                server = ceiling_process if "base" in scenario else app_process
                wait_until_idle(app_process.pid)  # logins queued by the last round finish first
                if scenario.get("prepare"):
                    scenario["prepare"]()
                before = cpu_used(server.pid)
                if beside:  # at once, each on its own connections
                    processes = [
                        start_wrk(app_base, scenario, connections=MIXED_LOGIN_CONNECTIONS),
                        start_wrk(app_base, beside, connections=CONNECTIONS - MIXED_LOGIN_CONNECTIONS),
                    ]
                    results = [wrk_result(process) for process in processes]
                    for result in results:  # one CPU reading for both: not split between them
                        result["cpu_us"] = None
                else:
                    results = [wrk(scenario.get("base", app_base), scenario)]
                    results[0]["cpu_us"] = cpu_per_request(before, cpu_used(server.pid), results[0]["requests"])
                if scenario.get("after"):
                    scenario["after"]()
                if scenario["name"] == CEILING:
                    ceiling_before = ceiling_after = results[0]["rps"]
                elif CEILING_SECONDS:
                    wait_until_idle(app_process.pid)
                    ceiling_after = wrk(ceiling_base, ceiling, CEILING_SECONDS)["rps"]
                    ceiling_readings.append(ceiling_after)
                for measured, result in zip(filter(None, (scenario, beside)), results, strict=True):
                    result["vs_ceiling"] = share_of_ceiling(result["rps"], ceiling_before, ceiling_after)
                    runs[measured["name"]].append(result)
                    print(
                        f"{measured['name']:<42} {result['rps']:8.0f} req/s  p50 {result['p50'] / 1000:6.1f} ms  "
                        f"p95 {result['p95'] / 1000:6.1f} ms  p99 {result['p99'] / 1000:6.1f} ms  "
                        f"errors {result['socket_errors'] + result['status_errors']}  "
                        f"vs ceiling {result['vs_ceiling']:.0%}",
                        flush=True,
                    )
                ceiling_before = ceiling_after
        results = [{**scenario, **median_of(runs[scenario["name"]])} for scenario in scenarios]
        hit_rate = cache_hit_rate(redis_url)
    finally:
        for process in (app_process, ceiling_process, worker):
            process.terminate()
            process.wait(timeout=30)
    report(results, hit_rate, machine, ceiling_readings)
    return 0


def share_of_ceiling(rps: float, ceiling_before: float, ceiling_after: float) -> float:
    """An endpoint's req/s over the ceiling's around it: the mean of the ceiling's reading
    just before the endpoint and just after it. The machine's speed drifts within a round
    as much as between rounds, and a round lasts minutes: a ceiling read once a round
    would judge the last endpoints by a speed the machine no longer had."""
    return rps / statistics.mean((ceiling_before, ceiling_after))


AB_SETTINGS = {"local_copies": ({}, {"CACHE_LOCAL_MAX_BYTES": "0"})}


def ab(env: dict, redis_url: str, password: str, machine: str) -> int:
    """BENCH_AB: the cached reads on A (the settings as they are) and B (one thing turned
    off), started side by side on the same data and cache, in the same run. Within a
    round each endpoint is measured on A and on B back to back, the order swapped every
    round, so the machine's drift between rounds falls on both alike."""
    if AB not in AB_SETTINGS:
        print(f"BENCH_AB must be one of {', '.join(AB_SETTINGS)}, not {AB!r}")
        return 2
    a_settings, b_settings = AB_SETTINGS[AB]
    services = {}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool=solo", "--loglevel=WARNING"],
        env=env,
        cwd=ROOT,
        stdout=(RESULTS / "worker.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        for side, settings in (("A", a_settings), ("B", b_settings)):
            services[side] = start({**env, **settings}, "wsgi:app", RESULTS / f"app-{side}.log")
        base = services["A"][1]
        token = call("POST", f"{base}/api/v1/auth/login", {"login": "user2", "password": password})["access_token"]
        call("GET", f"{base}/api/v1/feed", token=token)  # asks the worker for the revocation mirror
        wait_for_revocation_mirror(redis_url)
        scenarios = [
            {"name": "GET /users/{id} (cached)", "path": "/api/v1/users/{id}", "max_id": USERS, "fill": True},
            {
                "name": f"GET /posts/{{id}} (cached, random of {HOT_POSTS:,})",
                "path": "/api/v1/posts/{id}",
                "max_id": HOT_POSTS,
                "fill": True,
            },
            {"name": "GET /posts (page of 20)", "path": "/api/v1/posts?limit=20"},
            {"name": "GET /users?include=posts", "path": "/api/v1/users?include=posts&limit=20"},
            {"name": "GET /feed", "path": "/api/v1/feed?limit=20", "token": token},
        ]
        runs = {(scenario["name"], side): [] for scenario in scenarios for side in services}
        for round_number in range(1, ROUNDS + 1):
            print(f"round {round_number} of {ROUNDS}", flush=True)
            order = ("A", "B") if round_number % 2 else ("B", "A")
            for scenario in scenarios:
                if scenario.get("fill"):  # each id read once: the cache holds them all
                    for item_id in range(1, scenario["max_id"] + 1):
                        urllib.request.urlopen(base + scenario["path"].format(id=item_id), timeout=10).read()
                for side in order:
                    process, side_base = services[side]
                    if WARMUP_SECONDS:
                        wrk(side_base, scenario, WARMUP_SECONDS)
                    wait_until_idle(process.pid)
                    result = wrk(side_base, scenario)
                    runs[(scenario["name"], side)].append(result)
                    print(
                        f"{side} {scenario['name']:<42} {result['rps']:8.0f} req/s  "
                        f"p95 {result['p95'] / 1000:6.1f} ms  "
                        f"errors {result['socket_errors'] + result['status_errors']}",
                        flush=True,
                    )
    finally:
        for process in [worker, *(process for process, _ in services.values())]:
            process.terminate()
            process.wait(timeout=30)
    ab_report(scenarios, runs, a_settings, b_settings, machine)
    return 0


def ab_report(scenarios: list[dict], runs: dict, a_settings: dict, b_settings: dict, machine: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    def named(settings: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in settings.items()) or "the settings as they are"

    lines = [
        f"# make bench, BENCH_AB={AB}, {stamp}",
        "",
        f"A: {named(a_settings)}; B: {named(b_settings)}. {CONNECTIONS} connections, {SECONDS} s per endpoint "
        f"and side after {WARMUP_SECONDS} s unmeasured, {ROUNDS} round(s), A and B back to back in each "
        "(the order swapped every round); "
        f"gunicorn with WEB_CONCURRENCY={os.environ.get('WEB_CONCURRENCY', 'default')}.",
        f"Machine: {machine}.",
        "",
        "| endpoint | A req/s (range) | B req/s (range) | A over B | ranges overlap | A over B by round | errors |",
        "|---|---:|---:|---:|:-:|---:|---:|",
    ]
    for scenario in scenarios:
        a, b = runs[(scenario["name"], "A")], runs[(scenario["name"], "B")]
        a_rps, b_rps = [run["rps"] for run in a], [run["rps"] for run in b]
        gain = statistics.median(a_rps) / statistics.median(b_rps) - 1
        overlap = max(min(a_rps), min(b_rps)) <= min(max(a_rps), max(b_rps))
        # A and B of one round ran back to back: their ratio is spared most of the drift
        paired = " / ".join(f"{x / y - 1:+.0%}" for x, y in zip(a_rps, b_rps, strict=True))
        errors = sum(run["socket_errors"] + run["status_errors"] for run in a + b)
        lines.append(
            f"| {scenario['name']} | {statistics.median(a_rps):.0f} ({min(a_rps):.0f}-{max(a_rps):.0f}) "
            f"| {statistics.median(b_rps):.0f} ({min(b_rps):.0f}-{max(b_rps):.0f}) | {gain:+.1%} "
            f"| {'yes' if overlap else 'no'} | {paired} | {errors} |"
        )
    text_report = "\n".join(lines) + "\n"
    path = RESULTS / f"ab-{AB}.md"
    path.write_text(text_report)
    print("\n" + text_report + f"\nwritten: {path}")


def prepare_cache(app_base: str, redis_url: str, scenario: dict) -> None:
    from app.cache import profile_key

    if scenario.get("cold"):  # every round starts it on the same cold cache
        drop_cached(redis_url, scenario["cold"])
    if scenario.get("uncached"):  # misses all along: the entries gone, and tombstones stop the fills
        drop_cached(redis_url, "user:v1:")
        hold_misses(redis_url, profile_key(""), scenario["max_id"])
    if scenario.get("fill"):  # each id read once: the cache holds them all
        for item_id in range(1, scenario["max_id"] + 1):
            urllib.request.urlopen(app_base + scenario["path"].format(id=item_id), timeout=10).read()


class WriteScenarios:
    """What the write scenarios need: WRITERS users' tokens, posts for each connection
    to edit, and (follower, followed) pairs not followed in the seed, written to files
    bench/wrk.lua reads; and the SQL that sets the pairs up before each scenario."""

    def __init__(self, env: dict, app_base: str, password: str):
        from app.config import database_url

        self.app_base = app_base
        self.engine = create_engine(database_url(env["DATABASE_URL"]), isolation_level="AUTOCOMMIT")
        self.redis_url = env["REDIS_URL"]
        tokens = {
            i: call("POST", f"{app_base}/api/v1/auth/login", {"login": f"user{i}", "password": password})[
                "access_token"
            ]
            for i in range(1, WRITERS + 1)
        }
        self.tokens = RESULTS / ".bench-tokens"
        self.tokens.write_text("".join(f"{token}\n" for token in tokens.values()))
        self.edited = []  # (token, post id)
        for n in range(EDITED_POSTS):
            author = n % WRITERS + 1
            post = call(
                "POST", f"{app_base}/api/v1/posts", {"title": BENCH_POST_TITLE, "body": "To edit."}, tokens[author]
            )
            self.edited.append((tokens[author], post["id"]))
        self.posts_to_edit = RESULTS / ".bench-edits"
        with self.engine.connect() as conn:
            followed = set(
                conn.execute(
                    text("SELECT follower_id, followed_id FROM follows WHERE follower_id <= :n"), {"n": WRITERS}
                ).all()
            )
        self.pair_ids = [
            (follower, target)
            for target in range(1, USERS + 1)
            for follower in range(1, WRITERS + 1)
            if follower != target and (follower, target) not in followed
        ]
        self.pairs = RESULTS / ".bench-pairs"
        self.pairs.write_text("".join(f"{tokens[f]} {t}\n" for f, t in self.pair_ids))

    def fetch_etags(self) -> None:
        lines = []
        for token, post_id in self.edited:
            request = urllib.request.Request(f"{self.app_base}/api/v1/posts/{post_id}")
            with urllib.request.urlopen(request, timeout=10) as response:
                lines.append(f"{token} {post_id} {response.headers['ETag']}\n")
        self.posts_to_edit.write_text("".join(lines))

    def _set_pairs(self, sql: str) -> None:
        with self.engine.connect() as conn:
            conn.execute(
                text(sql),
                {"followers": [f for f, _ in self.pair_ids], "targets": [t for _, t in self.pair_ids]},
            )
            conn.execute(
                text(
                    "UPDATE users SET"
                    " follower_count = (SELECT count(*) FROM follows WHERE followed_id = users.id),"
                    " following_count = (SELECT count(*) FROM follows WHERE follower_id = users.id)"
                )
            )
        drop_cached(self.redis_url, "user:v1:")  # profiles (counts) and feeds, changed past the app

    def follow_all_pairs(self) -> None:
        """Before the unfollows: every pair followed, so each request removes one."""
        self._set_pairs(
            "INSERT INTO follows (follower_id, followed_id) SELECT * FROM unnest(CAST(:followers AS bigint[]),"
            " CAST(:targets AS bigint[])) ON CONFLICT DO NOTHING"
        )

    def unfollow_all_pairs(self) -> None:
        """Before the follows (and after the unfollows): no pair followed, as seeded."""
        self._set_pairs(
            "DELETE FROM follows USING unnest(CAST(:followers AS bigint[]), CAST(:targets AS bigint[])) AS p(f, t)"
            " WHERE follower_id = p.f AND followed_id = p.t"
        )


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
    read from /proc; None where there is no /proc. wrk's own CPU is not counted.

    Each process counts its own time and that of its children that have exited (cutime,
    cstime): a PostgreSQL backend or a gunicorn worker that ends between two readings
    moves its time to its parent (the postmaster, the gunicorn master), which is read
    too, so the sums never go down."""
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
        used[group] += sum(int(field) for field in fields[11:15]) / tick  # utime, stime, cutime, cstime
    return used


def wait_until_idle(server_pid: int, seconds: float = 60) -> None:
    """Until the server under test has used less than a tenth of a core for half a
    second: wrk stops sending, not the server working (32 logins still queued are 8 s of
    argon2), and that work must not land in the next endpoint's figures."""
    deadline = time.monotonic() + seconds
    last = cpu_used(server_pid)
    while last is not None and time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_used(server_pid)
        if now["web"] - last["web"] < 0.05:
            return
        last = now


def cpu_per_request(before: dict | None, after: dict | None, requests: int) -> dict[str, float] | None:
    """Microseconds of CPU per request in each group between two cpu_used() readings."""
    if before is None or after is None or not requests:
        return None
    return {group: (after[group] - before[group]) / requests * 1e6 for group in after}


# SET (ARGV[5] 'SET') or DEL ('DEL') the keys ARGV[3]..id for ids ARGV[1] to ARGV[2],
# SET ones expiring after ARGV[4] seconds: a range of tombstones without a round trip each
_TOMBSTONE_RANGE = """
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  if ARGV[5] == 'SET' then
    redis.call('SET', ARGV[3] .. i, 1, 'EX', ARGV[4])
  else
    redis.call('DEL', ARGV[3] .. i)
  end
end
"""


def hold_misses(redis_url: str, prefix: str, max_id: int, *, release: bool = False) -> None:
    """Set (or, `release`, delete) the tombstone of the cache entry `prefix`+id for every id
    up to `max_id`: while they stand, each read of such an id is a miss whose fill is
    refused, however often the id comes up. They expire on their own soon after the
    scenario."""
    import redis

    from app.cache import tombstone_key

    script = redis.Redis.from_url(redis_url).register_script(_TOMBSTONE_RANGE)
    seconds = SECONDS + WARMUP_SECONDS + 60
    for start in range(1, max_id + 1, 100_000):
        end = min(start + 99_999, max_id)
        script(args=[start, end, tombstone_key(prefix), seconds, "DEL" if release else "SET"])


def drop_cached(redis_url: str, prefix: str) -> None:
    """Delete the cache entries under `prefix` (the web processes' local copies hear of it)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.unlink(*keys[start : start + 1000])


def median_of(runs: list[dict]) -> dict:
    """One row from the rounds of an endpoint: the median of each figure, the errors of
    all rounds, and the spread of req/s, share and p95. The share of the ceiling is the
    median of each round's, each of the ceiling read around the endpoint (share_of_ceiling)."""
    figures = ("rps", "answered_rps", "vs_ceiling", "p50", "p95", "p99")
    row = {key: statistics.median([run[key] for run in runs]) for key in figures}
    row["socket_errors"] = sum(run["socket_errors"] for run in runs)
    row["status_errors"] = sum(run["status_errors"] for run in runs)
    row["error_kinds"] = dict(sum((Counter(run.get("error_kinds", {})) for run in runs), Counter()))
    row["requests"] = sum(run["requests"] for run in runs)
    row["rps_range"] = (min(run["rps"] for run in runs), max(run["rps"] for run in runs))
    row["p95_range"] = (min(run["p95"] for run in runs), max(run["p95"] for run in runs))
    row["share_range"] = (min(run["vs_ceiling"] for run in runs), max(run["vs_ceiling"] for run in runs))
    cpu = [run["cpu_us"] for run in runs if run["cpu_us"]]
    row["cpu_us"] = {group: statistics.median([c[group] for c in cpu]) for group in cpu[0]} if cpu else None
    return row


def errors_cell(row: dict) -> str:
    """The errors of all rounds, and what they were (wrk's kinds: an answer of status
    400 or more, such as a 503, or a socket's timeout, read, write or connect error),
    e.g. `1 (timeout 1)`."""
    total = row["socket_errors"] + row["status_errors"]
    kinds = ", ".join(f"{kind} {count}" for kind, count in row.get("error_kinds", {}).items() if count)
    return f"{total} ({kinds})" if total and kinds else str(total)


def python_speed() -> float:
    """Seconds for 10 million turns of an empty Python loop: a rough gauge of this
    machine, printed with the results so runs on different machines can be compared."""
    started = time.perf_counter()
    for _ in range(10_000_000):
        pass
    return time.perf_counter() - started


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cache_hit_rate(redis_url: str) -> float | None:
    import redis

    hits, misses = (int(v or 0) for v in redis.Redis.from_url(redis_url).mget("cache:stats:hits", "cache:stats:misses"))
    return hits / (hits + misses) if hits + misses else None


def report(results: list[dict], hit_rate: float | None, machine: str, ceiling_readings: list[float]) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# make bench, {stamp}",
        "",
        f"{CONNECTIONS} connections, {SECONDS} s per endpoint after {WARMUP_SECONDS} s unmeasured (reads), "
        f"{ROUNDS} round(s) in turn, the median of each figure (the range of the rounds beside it); "
        f"wrk on loopback; gunicorn with WEB_CONCURRENCY={os.environ.get('WEB_CONCURRENCY', 'default')}; "
        f"{USERS} users, {USERS * POSTS} posts, {USERS * FOLLOWS} follows.",
        f"Machine: {machine}.",
        ceiling_line(ceiling_readings),
        "",
        "| endpoint | req/s (range) | vs ceiling (range) | p50 ms | p95 ms (range) | p99 ms | errors "
        "| CPU µs/request: web / PG / Redis |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        errors = errors_cell(r)
        cpu = " / ".join(f"{v:,.0f}" for v in r["cpu_us"].values()) if r["cpu_us"] else "n/a"
        rps_range = "({:.0f}-{:.0f})".format(*r["rps_range"]) if ROUNDS > 1 else ""
        p95_range = "({:.1f}-{:.1f})".format(*(v / 1000 for v in r["p95_range"])) if ROUNDS > 1 else ""
        share_range = "({:.0f}-{:.0f})".format(*(v * 100 for v in r["share_range"])) if ROUNDS > 1 else ""
        lines.append(
            f"| {r['name']} | {r['rps']:.0f} {rps_range} | {r['vs_ceiling']:.0%} {share_range} | "
            f"{r['p50'] / 1000:.1f} | {r['p95'] / 1000:.1f} {p95_range} | {r['p99'] / 1000:.1f} | {errors} | {cpu} |"
        )
    reads = [r for r in results if not r.get("write") and "base" not in r]
    slow_reads = [r["name"] for r in reads if r["p95"] >= 50_000]
    read_errors = [r["name"] for r in reads if r["socket_errors"] + r["status_errors"]]
    lines += [
        "",
        f"- zero errors: {'yes' if all(r['socket_errors'] + r['status_errors'] == 0 for r in results) else 'NO'}",
        f"- zero errors on every read: {'yes' if not read_errors else 'NO, not ' + ', '.join(read_errors)}",
        f"- p95 under 50 ms for every read: {'yes' if not slow_reads else 'NO, not ' + ', '.join(slow_reads)}",
        *(goal_lines(results)),
        f"- cache hit rate over the run: {hit_rate:.1%}" if hit_rate is not None else "- cache hit rate: n/a",
    ]
    text_report = "\n".join(lines) + "\n"
    (RESULTS / "latest.md").write_text(text_report)
    chart(results, RESULTS / "latest.png")
    print("\n" + text_report + f"\nwritten: {RESULTS / 'latest.md'}, {RESULTS / 'latest.png'}")


def ceiling_line(readings: list[float]) -> str:
    if not readings:
        return "The ceiling was read once a round; each share is of that round's reading."
    return (
        f"Each share is of the mean of the ceiling's readings just before and just after the endpoint "
        f"({len(readings)} readings of {CEILING_SECONDS} s between endpoints, "
        f"{min(readings):,.0f}-{max(readings):,.0f} req/s)."
    )


CEILING = "ceiling: bare Flask JSON"
FLOOR_MISS = "floor: a cache miss's I/O alone (raw drivers)"
FLOOR_POST = "floor: a post's I/O alone (raw drivers)"
# the endpoints whose goals a floor bounds: what the same work reaches at best
FLOORS = {"GET /users/{id} (uncached)": FLOOR_MISS, "POST /posts": FLOOR_POST}

# (row name starts with, the least share of the ceiling), checked by goal_lines
RATIO_GOALS = [
    ("GET /users/{id} (cached)", 0.60),
    ("GET /posts/{id} (random of", 0.35),
    ("GET /users/{id} (uncached)", 0.35),
    ("GET /feed", 0.40),
    ("POST /posts", 0.25),
    ("PATCH /posts/{id}", 0.20),
    ("PUT /users/{id}/follow", 0.20),
    ("DELETE /users/{id}/follow", 0.20),
    ("PATCH /users/me", 0.20),
]
LOGINS_PER_SECOND = 40


def goal_lines(results: list[dict]) -> list[str]:
    """The verdict on each goal of the report: a share of the ceiling per
    endpoint, the feed's p95, logins per second, and cached reads beside a login flood."""

    def row(prefix: str) -> dict | None:
        return next((r for r in results if r["name"].startswith(prefix)), None)

    def verdict(ok: bool) -> str:
        return "yes" if ok else "NO"

    lines = []
    for prefix, share in RATIO_GOALS:
        if (r := row(prefix)) is not None:
            floor = row(FLOORS[prefix]) if prefix in FLOORS else None
            bound = f"; its I/O alone with raw drivers: {floor['vs_ceiling']:.0%}" if floor else ""
            lines.append(
                f"- {r['name']} at least {share:.0%} of the ceiling: "
                f"{verdict(r['vs_ceiling'] >= share)} ({r['vs_ceiling']:.0%}{bound})"
            )
    if (feed := row("GET /feed")) is not None:
        lines.append(f"- GET /feed p95 under 50 ms: {verdict(feed['p95'] < 50_000)} ({feed['p95'] / 1000:.1f} ms)")
    if (login := row("POST /auth/login")) is not None:
        lines.append(
            f"- at least {LOGINS_PER_SECOND} logins a second: "
            f"{verdict(login['answered_rps'] >= LOGINS_PER_SECOND)} ({login['answered_rps']:.0f}/s, "
            f"errors {errors_cell(login)})"
        )
    mixed_reads, mixed_logins = row("mixed: GET"), row("mixed: POST")
    if mixed_reads is not None and mixed_logins is not None:
        errors = mixed_reads["socket_errors"] + mixed_reads["status_errors"]
        lines.append(
            f"- cached reads beside a login flood, p95 under 50 ms and no errors: "
            f"{verdict(mixed_reads['p95'] < 50_000 and not errors)} ({mixed_reads['p95'] / 1000:.1f} ms, "
            f"errors {errors_cell(mixed_reads)}; logins meanwhile {mixed_logins['answered_rps']:.0f}/s, "
            f"errors {errors_cell(mixed_logins)})"
        )
    return lines


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
