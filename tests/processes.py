"""Real worker processes for the integration tests (started and killed by the tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def service_env(app, test_db_url, **extra) -> dict:
    return {
        **os.environ,
        "APP_ENV": "test",
        "DATABASE_URL": test_db_url.render_as_string(hide_password=False),
        "REDIS_URL": app.config["REDIS_URL"],
        **extra,
    }


class Worker:
    """`celery -A worker worker` in its own process group, logging to a file."""

    def __init__(self, env: dict, log_path: Path, *, name: str = "w1", pool: str = "solo", beat: bool = False):
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

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children) at once."""
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
