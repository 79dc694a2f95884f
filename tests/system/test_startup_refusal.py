"""Every process type of the Procfile refuses unsafe production settings the same way:
one line on stderr, no traceback, a non-zero exit, and soon (no worker boot loop).

Real processes, started as the Procfile starts them; the refusal comes before any
connection, so the database and Redis URLs only need to be set.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
REFUSAL = "postboard: refusing to start: "
COMMANDS = {
    "web": ["-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
    "worker": ["-m", "celery", "-A", "worker", "worker", "--pool=solo"],
    "beat": ["-m", "celery", "-A", "worker", "beat"],
    "release": ["-m", "flask", "db", "upgrade"],
}
# (environment changes, what the line must name)
SETTINGS = {
    "APP_ENV unset, no secrets": ({}, ["SECRET_KEY must be set", "JWT_SECRET_KEY must be set"]),
    "CORS for everyone, long tokens": (
        {
            "APP_ENV": "production",
            "SECRET_KEY": secrets.token_urlsafe(40),
            "JWT_SECRET_KEY": secrets.token_urlsafe(40),
            "CORS_ORIGINS": "https://a.example,*",
            "JWT_ACCESS_TOKEN_MINUTES": "240",
        },
        ["CORS_ORIGINS", "JWT_ACCESS_TOKEN_MINUTES"],
    ),
}


def _environment(tmp_path: Path, **changes) -> dict:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"APP_ENV", "SECRET_KEY", "JWT_SECRET_KEY", "CORS_ORIGINS", "JWT_ACCESS_TOKEN_MINUTES"}
        and not key.startswith(("ARGON2_", "PROMETHEUS_"))
    }
    env.update(
        PYTHONPATH=str(ROOT),
        FLASK_APP="wsgi:app",
        INSTANCE_DIR=str(tmp_path / "instance"),
        DATABASE_URL="postgresql://postboard@127.0.0.1:1/none",
        REDIS_URL="redis://127.0.0.1:1/0",
        HOST="127.0.0.1",
        PORT=str(free_port()),
        WEB_CONCURRENCY="2",
    )
    return env | changes


def _run(args: list[str], env: dict, cwd: Path, timeout: float = 60) -> tuple[int, str, str]:
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"still running after {timeout} s:\n{err[-3000:]}")
    return process.returncode, out, err


def _refusals(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(REFUSAL)]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("process", COMMANDS)
def test_each_process_type_refuses_with_one_line(tmp_path, process, settings):
    changes, named = SETTINGS[settings]
    code, out, err = _run(COMMANDS[process], _environment(tmp_path, **changes), ROOT)
    assert code != 0, err
    assert "Traceback" not in out + err, err
    refusals = _refusals(err)
    assert len(refusals) == 1, err  # gunicorn: from the master, not once per worker
    for words in named:
        assert words in refusals[0], refusals[0]
    assert "Booting worker" not in err  # gunicorn stopped before forking
    assert not (tmp_path / "instance").exists()  # production makes no secrets


def test_gunicorn_without_our_config_file_stops_too(tmp_path):
    """Outside the Procfile (no gunicorn.conf.py), the worker refuses as it loads the app,
    with gunicorn's boot-error code, so the master stops instead of forking another. (One
    worker: when two fail at once, gunicorn's own halt can raise again and log that.)"""
    bind = f"127.0.0.1:{free_port()}"
    env = _environment(tmp_path, WEB_CONCURRENCY="1")
    code, out, err = _run(["-m", "gunicorn", "-b", bind, "wsgi:app"], env, tmp_path)
    assert code == 3, err
    assert "Traceback" not in out + err, err
    assert _refusals(err), err
    assert "Reason: Worker failed to boot." in err
