"""The service as it is deployed: separate web processes (gunicorn) and a worker on the
same PostgreSQL and Redis, and the Procfile's processes run by honcho."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from app import cache
from tests.support.factories import PASSWORD
from tests.support.processes import Web, Worker, free_port, http, service_env

ROOT = Path(__file__).resolve().parents[2]


def register_and_log_in(base: str, name: str) -> dict:
    body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
    assert http("POST", f"{base}/api/v1/auth/register", json_body=body)[0] == 201
    status, _, tokens = http("POST", f"{base}/api/v1/auth/login", json_body={"login": name, "password": PASSWORD})
    assert status == 200, tokens
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def wait_for_job(url: str, headers: dict, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, _, job = http("GET", url, headers=headers)
        assert status == 200, job
        if job["status"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


@pytest.mark.no_transaction
def test_two_web_instances_and_a_worker_share_one_truth(app, committed, test_db_url, tmp_path):
    env = service_env(app, test_db_url)
    one, two = Web(env, tmp_path / "web1.log"), Web(env, tmp_path / "web2.log")
    worker = Worker(env, tmp_path / "worker.log")
    try:
        one.wait_ready(), two.wait_ready(), worker.wait_ready()
        a, b = one.url(""), two.url("")
        headers = register_and_log_in(a, "roamer")
        assert http("GET", f"{b}/api/v1/users/me", headers=headers)[0] == 200
        # a logout on one is honoured by the other at once
        assert http("POST", f"{a}/api/v1/auth/logout", headers=headers)[0] == 204
        assert http("GET", f"{b}/api/v1/users/me", headers=headers)[0] == 401
        # a profile edit on one is fresh on the other (which had it cached)
        status, _, tokens = http("POST", f"{b}/api/v1/auth/login", json_body={"login": "roamer", "password": PASSWORD})
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        me = http("GET", f"{b}/api/v1/users/me", headers=headers)[2]
        for _ in range(2):  # the first read fills Redis, the second keeps a copy in b's process
            assert http("GET", f"{b}/api/v1/users/{me['id']}")[2]["display_name"] == "roamer"
        assert http("PATCH", f"{a}/api/v1/users/me", json_body={"display_name": "Roamer B"}, headers=headers)[0] == 200
        assert http("GET", f"{b}/api/v1/users/{me['id']}")[2]["display_name"] == "Roamer B"
        # a post written on one is at once first in the newest posts and in a follower's
        # feed on the other, which holds copies of both cached first pages
        fan = register_and_log_in(a, "fan")
        assert http("PUT", f"{a}/api/v1/users/{me['id']}/follow", headers=fan)[0] == 204
        shared = redis.Redis.from_url(app.config["REDIS_URL"])
        shared.delete(*shared.keys("tombstone:*") or ["-"])  # as if the seconds after those writes had passed
        for _ in range(2):  # the first read fills Redis, the second keeps a copy in b's process
            assert http("GET", f"{b}/api/v1/posts?limit=5")[0] == 200
            assert http("GET", f"{b}/api/v1/feed?limit=5", headers=fan)[2]["items"] == []
        fan_id = http("GET", f"{a}/api/v1/users/me", headers=fan)[2]["id"]
        assert shared.exists(cache.newest_posts_key(), cache.feed_key(fan_id)) == 2
        status, _, post = http("POST", f"{a}/api/v1/posts", json_body={"title": "Fresh", "body": "b"}, headers=headers)
        assert status == 201
        assert http("GET", f"{b}/api/v1/posts?limit=5")[2]["items"][0]["id"] == post["id"]
        assert [p["id"] for p in http("GET", f"{b}/api/v1/feed?limit=5", headers=fan)[2]["items"]] == [post["id"]]
        # a job queued on one is finished by the worker and seen on the other
        status, response_headers, _job = http("POST", f"{a}/api/v1/users/me/export", headers=headers)
        assert status == 202
        done = wait_for_job(f"{b}{response_headers['Location']}", headers)
        assert done["status"] == "succeeded", done
    finally:
        for process in (one, two, worker):
            process.stop()


@pytest.mark.no_transaction
def test_the_procfile_processes_run_end_to_end(app, committed, test_db_url, tmp_path):
    port = free_port()
    env = service_env(
        app,
        test_db_url,
        PORT=str(port),
        HOST="127.0.0.1",
        WEB_CONCURRENCY="2",
        WORKER_SHORT_CONCURRENCY="1",
        WORKER_LONG_CONCURRENCY="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    log = (tmp_path / "honcho.log").open("w")
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "start", "web", "worker_short", "worker_long"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while (tmp_path / "honcho.log").read_text().count(" ready.") < 2:  # both workers
            assert time.monotonic() < deadline and honcho.poll() is None, (tmp_path / "honcho.log").read_text()
            time.sleep(0.2)
        headers = register_and_log_in(base, "procfile")
        status, _, _post = http(
            "POST", f"{base}/api/v1/posts", json_body={"title": "Hi", "body": "From honcho"}, headers=headers
        )
        assert status == 201
        lines = "\n".join(json.dumps({"external_id": str(i), "title": f"T{i}", "body": "b"}) for i in range(500))
        status, response_headers, _ = http(
            "POST", f"{base}/api/v1/posts/import", headers=headers, files={"file": ("posts.jsonl", lines.encode())}
        )
        assert status == 202
        job = wait_for_job(f"{base}{response_headers['Location']}", headers)
        assert job["status"] == "succeeded" and job["result"]["imported"] == 500
        me = http("GET", f"{base}/api/v1/users/me", headers=headers)[2]
        assert me["post_count"] == 501
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        try:
            honcho.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
        log.close()


def test_a_web_process_opens_a_control_socket_only_at_the_path_it_is_given(app, test_db_url, tmp_path):
    home = tmp_path / "home"  # gunicorn's default place for it: ~/.gunicorn/gunicorn.ctl
    home.mkdir()
    env = service_env(app, test_db_url, HOME=str(home))
    env.pop("XDG_RUNTIME_DIR", None)
    env.pop("WEB_CONTROL_SOCKET", None)
    socket_path = tmp_path / "web.ctl"
    plain = Web(env, tmp_path / "plain.log")
    controlled = Web({**env, "WEB_CONTROL_SOCKET": str(socket_path)}, tmp_path / "controlled.log", workers=2)
    try:
        plain.wait_ready(), controlled.wait_ready()
        assert list(home.rglob("*")) == []
        assert "control socket" not in plain.log().lower()
        # the one given a path answers gunicornc there, about itself
        answer = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from gunicorn.ctl.cli import main; sys.exit(main())",
                "-s",
                str(socket_path),
                "-c",
                "show workers",
                "-j",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert json.loads(answer.stdout)["count"] == 2
        assert oct(socket_path.stat().st_mode & 0o777) == oct(0o600)
    finally:
        plain.stop(), controlled.stop()
