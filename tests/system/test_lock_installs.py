"""requirements.txt installs as the image and a buildpack install it: pip resolves it
from the package index with every dependency pinned and each file matching its hash."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_lock_installs_with_hashes_and_nothing_unpinned(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--require-hashes",
            "--disable-pip-version-check",
            "--report",
            str(tmp_path / "report.json"),
            "-r",
            str(ROOT / "requirements.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    installed = {
        item["metadata"]["name"].lower() for item in json.loads((tmp_path / "report.json").read_text())["install"]
    }
    assert {"flask", "celery", "psycopg-binary", "gunicorn", "flask-swagger-ui"} <= installed
