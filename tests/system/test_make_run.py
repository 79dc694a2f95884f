"""`make run` as a developer meets it: demo data, every process of the Procfile, then (after
their banners) where the API and /docs are and the demo logins; Ctrl-C ends it all
without a make error line.

Runs the Makefile's own recipe with the Python running the tests (`-o` keeps make from
rebuilding that environment) against the suite's database and Redis."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import free_port, http, service_env

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while text not in (output := path.read_text()):
        if time.monotonic() > deadline or process.poll() is not None:
            raise AssertionError(f"no {text!r} in time:\n{output[-4000:]}")
        time.sleep(0.2)
    return output


@pytest.mark.no_transaction
def test_make_run_announces_itself_when_up_and_stops_cleanly_on_ctrl_c(app, committed, test_db_url, tmp_path):
    port = free_port()
    env = service_env(
        app,
        test_db_url,
        PORT=str(port),
        INSTANCE_DIR=str(tmp_path),
        BEAT_SCHEDULE_FILE=str(tmp_path / "beat-schedule"),
        WORKER_SHORT_CONCURRENCY="1",
        WORKER_LONG_CONCURRENCY="1",
    )
    env.pop("APP_ENV")  # the recipe names its own profile
    log = tmp_path / "make-run.log"
    with log.open("w") as out:
        make = subprocess.Popen(
            [shutil.which("make"), "-o", f"{VENV}/bin/.installed", f"VENV={VENV}", "run"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output = wait_for(log, "Ctrl-C stops everything.", make, timeout=150)
            # the announcement comes after every process's own start-up lines
            announced = output.index("postboard is up")
            for started in ("Listening at", "short@", "long@", "celery beat v"):
                assert -1 < output.find(started) < announced, started
            assert f"API      http://127.0.0.1:{port}/api/v1/" in output
            assert f"docs     http://127.0.0.1:{port}/docs" in output
            admin = re.search(r"admin: login=admin password=(\S+)", output[announced:]).group(1)
            users = re.search(r"users: login=user1 \.\. user\d+ password=(\S+)", output[announced:]).group(1)
            assert admin != users
            base = f"http://127.0.0.1:{port}/api/v1"
            assert http("POST", f"{base}/auth/login", json_body={"login": "admin", "password": admin})[0] == 200
            assert list(tmp_path.glob("beat-schedule*"))
        finally:
            # Ctrl-C: the terminal sends SIGINT to the whole foreground process group (honcho
            # then stops its processes, each in a group of its own: a SIGKILL would miss them)
            os.killpg(make.pid, signal.SIGINT)
            try:
                make.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait()
    output = log.read_text()
    tail = output[output.index("Ctrl-C stops everything.") :]
    assert "make: ***" not in tail and "Traceback" not in tail, tail[-3000:]
    # make, itself interrupted, ends by the signal; its child (the recipe) ended with 0
    assert make.returncode in (0, -signal.SIGINT), (make.returncode, tail[-3000:])


def test_beat_keeps_its_schedule_under_instance():
    procfile = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert "--schedule=${BEAT_SCHEDULE_FILE:-instance/" in procfile["beat"]
    assert "/tmp" not in procfile["beat"]  # noqa: S108 (that it is not used)


def test_announce_says_what_it_still_waits_for(tmp_path):
    env = {**os.environ, "PORT": str(free_port()), "BEAT_SCHEDULE_FILE": str(tmp_path / "none"), "APP_ENV": "test"}
    env["REDIS_URL"] = env["CELERY_BROKER_URL"] = os.environ.get("TEST_REDIS_URL", env.get("REDIS_URL", ""))
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "announce.py"), "--timeout", "1"],
        env={k: v for k, v in env.items() if v},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "still waiting for: the API" in done.stdout and "beat" in done.stdout, done.stdout + done.stderr
    assert "postboard is up" not in done.stdout
