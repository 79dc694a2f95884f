"""A private PostgreSQL (pgserver's binaries) that a test may stop and start."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pgserver
from pgserver._commands import pg_basebackup, pg_ctl, psql


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


class ReplicaServer(PostgresServer):
    """A streaming replica of `primary` (pg_basebackup from the same binaries), on a
    socket directory of its own. `pause_replay()` holds it behind the primary."""

    def __init__(self, primary: PostgresServer):
        self.dir = Path(tempfile.mkdtemp(prefix="test-pg-replica-"))
        self.pgdata = self.dir / "data"
        self.socket_dir = self.dir / "run"
        self.user = primary.user
        for folder in (self.pgdata, self.socket_dir):
            folder.mkdir(mode=0o700)
        if self.user:
            os.chmod(self.dir, 0o755)  # noqa: S103  (the server runs as its own user)
            shutil.chown(self.pgdata, self.user, self.user)
            shutil.chown(self.socket_dir, self.user, self.user)
        pg_basebackup(
            [
                "-D",
                str(self.pgdata),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                str(primary.socket_dir),
                "-U",
                "postgres",
            ],
            user=self.user,
            timeout=60,
        )
        self.start()

    def sql(self, statement: str) -> str:
        return psql(["-h", str(self.socket_dir), "-U", "postgres", "-d", "app", "-Atc", statement], user=self.user)

    def pause_replay(self) -> None:
        self.sql("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.sql("SELECT pg_wal_replay_resume()")
