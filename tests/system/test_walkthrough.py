"""The README's curl walk-through (scripts/walkthrough.sh) against a real gunicorn."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import Web, service_env

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "walkthrough.sh"


@pytest.mark.no_transaction
def test_the_walkthrough_runs_end_to_end_twice_in_a_row(app, committed, test_db_url, tmp_path):
    web = Web(service_env(app, test_db_url), tmp_path / "web.log")
    try:
        web.wait_ready()
        # a second run finds the first one's accounts and posts; the server is named by
        # its port (as after `PORT=... make run`), then by its URL
        for where in ({"PORT": str(web.port)}, {"API": web.url("")}):
            environment = {k: v for k, v in os.environ.items() if k not in ("API", "PORT")}
            done = subprocess.run(
                [shutil.which("sh"), str(SCRIPT)],
                env={**environment, **where},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stdout + done.stderr + web.log()
            assert done.stdout.rstrip().endswith("walkthrough done"), done.stdout
    finally:
        web.stop()
