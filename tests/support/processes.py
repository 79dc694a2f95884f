"""Real worker processes for the integration tests (started and killed by the tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from app.queue import QUEUES


def service_env(app, test_db_url, **extra) -> dict:
    return {
        **os.environ,
        "APP_ENV": "test",
        "DATABASE_URL": test_db_url.render_as_string(hide_password=False),
        "REDIS_URL": app.config["REDIS_URL"],
        **extra,
    }


class Process:
    """A child process in its own process group, logging to a file."""

    process: subprocess.Popen
    log_path: Path
    _log: object

    def kill(self) -> None:
        """SIGKILL the whole group (a worker's main process and its pool children) at once."""
        import signal

        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]


class Worker(Process):
    """`celery -A worker worker -Q <queues>`: both queues unless told which."""

    def __init__(
        self,
        env: dict,
        log_path: Path,
        *,
        name: str = "w1",
        pool: str = "solo",
        beat: bool = False,
        queues: Sequence[str] = QUEUES,
    ):
        self.log_path = log_path
        self._log = log_path.open("a")
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "worker",
            f"--pool={pool}",
            "--concurrency=1",
            f"--queues={','.join(queues)}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"{name}-{os.getpid()}@%h",
        ]
        if beat:
            args += ["--beat", "--schedule", str(log_path.parent / f"beat-{name}")]
        self.process = subprocess.Popen(
            args, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 30) -> Worker:
        deadline = time.monotonic() + timeout
        while " ready." not in self.log_path.read_text():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("worker did not start:\n" + self.log_path.read_text()[-3000:])
            time.sleep(0.1)
        return self


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, *, json_body=None, headers=None, files=None, timeout: float = 10):
    """(status, headers, parsed body) of one real HTTP request; `files` = {field: (name, bytes)}."""
    import json
    import urllib.error
    import urllib.request
    import uuid

    headers = dict(headers or {})
    data = None
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    elif files:
        boundary = uuid.uuid4().hex
        parts = []
        for field, (filename, content) in files.items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n".encode()
                + content
                + b"\r\n"
            )
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, response_headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, response_headers, raw = error.code, dict(error.headers), error.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw
    return status, response_headers, body


class Web(Process):
    """The Procfile's web process (gunicorn with its config file) on a port of its own."""

    def __init__(self, env: dict, log_path: Path, *, workers: int = 1):
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("a")
        env = {**env, "HOST": "127.0.0.1", "PORT": str(self.port), "WEB_CONCURRENCY": str(workers)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = 30) -> Web:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if http("GET", self.url("/healthz"), timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("web did not start:\n" + self.log_path.read_text()[-3000:])
            time.sleep(0.1)
