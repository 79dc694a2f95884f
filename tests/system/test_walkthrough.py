"""The README's curl walk-through (scripts/walkthrough.sh) against a real gunicorn, a
Celery worker, and the SMTP server of `make run` (scripts/mail_server.py) keeping .eml
files, which the script reads its mailed tokens from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import Web, Worker, free_port, service_env

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
SCRIPT = SCRIPTS / "walkthrough.sh"


@pytest.mark.no_transaction
def test_the_walkthrough_runs_end_to_end_twice_in_a_row(app, committed, test_db_url, tmp_path):
    mail_dir, port = tmp_path / "mail", free_port()
    with (tmp_path / "mail.log").open("w") as mail_log:
        mail = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "mail_server.py"), "--port", str(port), "--dir", str(mail_dir)],
            stdout=mail_log,
            stderr=subprocess.STDOUT,
        )
    env = service_env(app, test_db_url, MAIL_URL=f"smtp+plain://127.0.0.1:{port}")
    web = Web(env, tmp_path / "web.log")
    worker = Worker(env, tmp_path / "worker.log")
    try:
        web.wait_ready()
        worker.wait_ready()
        # a second run finds the first one's accounts and posts; the server is named by
        # its port (as after `PORT=... make run`), then by its URL
        for where in ({"PORT": str(web.port)}, {"API": web.url("")}):
            environment = {k: v for k, v in os.environ.items() if k not in ("API", "PORT")}
            done = subprocess.run(
                [shutil.which("sh"), str(SCRIPT)],
                env={**environment, **where, "MAIL_DIR": str(mail_dir)},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stdout + done.stderr + web.log() + worker.log()
            assert done.stdout.rstrip().endswith("walkthrough done"), done.stdout
        # the SMTP server announced each mail it kept: 2 verifications and a reset per run
        assert len(list(mail_dir.glob("*.eml"))) == 6
        assert (tmp_path / "mail.log").read_text().count("[mail] to ") == 6
    finally:
        web.stop()
        worker.stop()
        mail.terminate()
        mail.wait(timeout=10)
