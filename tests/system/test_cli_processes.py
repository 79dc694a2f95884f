"""The `flask` command as a user runs it: it reads .env (python-dotenv, as honcho does),
and a backing service it cannot reach is one line saying what to do, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLASK = Path(sys.executable).parent / "flask"


def flask(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    inherited = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "FLASK_APP"}}
    return subprocess.run(
        [str(FLASK), *args],
        cwd=cwd,
        env={**inherited, "PYTHONPATH": str(ROOT), "FLASK_APP": "wsgi:app", "INSTANCE_DIR": str(cwd), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("dotenv", "args", "service", "where", "setting"),
    [
        (
            "DATABASE_URL=postgresql://nobody@127.0.0.1:1/none",
            ["jobs", "list"],
            "PostgreSQL",
            "port 1 ",
            "DATABASE_URL",
        ),
        ("REDIS_URL=redis://127.0.0.1:1/0", ["cache", "stats"], "Redis", "127.0.0.1:1.", "REDIS_URL"),
    ],
)
def test_flask_reads_dotenv_and_an_unreachable_service_is_one_line(tmp_path, dotenv, args, service, where, setting):
    (tmp_path / ".env").write_text(f"APP_ENV=test\n{dotenv}\n")
    done = flask(args, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"Error: cannot reach {service} ("), line
    assert where in line, line  # the server .env names
    assert "make" in line and setting in line, line
