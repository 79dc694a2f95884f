"""A private PostgreSQL (pgserver's binaries) that a test may stop and start."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pgserver
from pgserver._commands import pg_ctl


class PostgresServer:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="test-pg-"))
        self.pgdata = self.dir / "data"
        self.pgdata.mkdir()
        server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        self.socket_dir = server.get_postmaster_info().socket_dir
        self.user = "pgserver" if os.geteuid() == 0 else None
        server.psql("CREATE DATABASE app;")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/app?host={self.socket_dir}"

    def stop(self) -> None:
        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.pgdata, user=self.user)

    def start(self) -> None:
        pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start"],
            pgdata=self.pgdata,
            user=self.user,
            timeout=20,
        )

    def cleanup(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
