"""`make profile`: where one endpoint's time goes, measured in-process with pyinstrument.

It uses the database and Redis database that `make bench` seeds (seeding them if need
be), builds the app with production settings inside this process, warms it up, then
sends PROFILE_PATH (default /api/v1/feed?limit=20) PROFILE_REQUESTS times (default 2,000)
as user2 through Flask's test client (PROFILE_METHOD, default GET; a write sends
PROFILE_BODY, JSON, by default a new post titled as make bench's, which its next run
removes), under pyinstrument. It prints the call tree and
writes the interactive one to bench/results/profile.html. No HTTP server and no other
process: this shows the app's own cost; `make bench` shows the whole service's.
A running gunicorn can be sampled instead with py-spy (installed with the `bench` extra):
`py-spy record --subprocesses -p <gunicorn master pid>`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import BENCH_POST_TITLE, RESULTS, bench_in_this_process  # noqa: E402

PATH = os.environ.get("PROFILE_PATH", "/api/v1/feed?limit=20")
METHOD = os.environ.get("PROFILE_METHOD", "GET").upper()
BODY = json.loads(os.environ.get("PROFILE_BODY") or json.dumps({"title": BENCH_POST_TITLE, "body": "Profiled."}))
REQUESTS = int(os.environ.get("PROFILE_REQUESTS", "2000"))
SHOW_ALL = os.environ.get("PROFILE_ALL", "") not in ("", "0")  # every frame, libraries included


def main() -> int:
    from pyinstrument import Profiler

    RESULTS.mkdir(parents=True, exist_ok=True)
    password = bench_in_this_process()

    from app.auth import revocation
    from app.factory import create_app

    app = create_app()
    with app.app_context():
        revocation.rebuild_mirror()  # as a worker would: the checks then answer from Redis
    client = app.test_client()
    login = client.post("/api/v1/auth/login", json={"login": "user2", "password": password})
    headers = {"Authorization": f"Bearer {login.get_json()['access_token']}"}

    def send():
        return client.open(PATH, method=METHOD, headers=headers, json=None if METHOD == "GET" else BODY)

    for _ in range(max(200, REQUESTS // 10)):  # warm up: pools, caches, local copies
        response = send()
        assert response.status_code < 300, (PATH, response.status_code, response.get_data(as_text=True))

    profiler = Profiler(interval=0.0002)
    profiler.start()
    for _ in range(REQUESTS):
        send()
    profiler.stop()

    seconds = profiler.last_session.duration
    each = seconds / REQUESTS * 1e6
    print(f"{METHOD} {PATH}: {REQUESTS} requests in {seconds:.2f} s, {each:.0f} µs each (profiled)\n")
    print(profiler.output_text(unicode=True, color=sys.stdout.isatty(), show_all=SHOW_ALL))
    out = RESULTS / "profile.html"
    out.write_text(profiler.output_html())
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
