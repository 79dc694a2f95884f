"""The smoke paths through a real PgBouncer in transaction pooling (DB_PGBOUNCER mode).

Runs when the `pgbouncer` binary is installed (.ci/run installs Debian's package).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from app.config import engine_options
from app.db import db
from app.factory import create_app
from app.jobs import service as jobs
from tests.support.factories import PASSWORD
from tests.support.processes import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
pytestmark = pytest.mark.skipif(not os.path.exists(PGBOUNCER), reason="pgbouncer is not installed")


@pytest.fixture
def pgbouncer(test_db_url):
    """A PgBouncer on a free port, transaction pooling, in front of the test database."""
    workdir = tempfile.mkdtemp(prefix="test-pgbouncer-")
    port = free_port()
    host = test_db_url.query.get("host") or test_db_url.host or "127.0.0.1"
    server_port = test_db_url.port or 5432
    user = test_db_url.username or "postgres"
    with open(f"{workdir}/users.txt", "w") as f:
        f.write(f'"{user}" ""\n')
    with open(f"{workdir}/pgbouncer.ini", "w") as f:
        f.write(
            "[databases]\n"
            f"{test_db_url.database} = host={host} port={server_port} dbname={test_db_url.database} user={user}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {workdir}/users.txt\n"
            "pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 100\n"
            f"logfile = {workdir}/pgbouncer.log\npidfile = {workdir}/pgbouncer.pid\n"
        )
    args = [PGBOUNCER, f"{workdir}/pgbouncer.ini"]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root: hand it the folder and drop to a user
        runner = "pgserver" if _user_exists("pgserver") else "nobody"
        for path in (workdir, f"{workdir}/pgbouncer.ini", f"{workdir}/users.txt"):
            shutil.chown(path, runner)
        args[1:1] = ["-u", runner]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = test_db_url.set(host="127.0.0.1", port=port, query={})
    deadline = time.monotonic() + 10
    while True:
        try:
            psycopg.connect(host="127.0.0.1", port=port, dbname=test_db_url.database, user=user).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline or process.poll() is not None:
                log_path = f"{workdir}/pgbouncer.log"
                log = open(log_path).read() if os.path.exists(log_path) else ""  # noqa: SIM115
                raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}") from None
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.mark.no_transaction
def test_smoke_paths_through_pgbouncer(app, committed, pgbouncer):
    behind = create_app(
        {
            "APP_ENV": "test",
            "REDIS_URL": app.config["REDIS_URL"],
            "DB_PGBOUNCER": True,
            "SQLALCHEMY_DATABASE_URI": pgbouncer.render_as_string(False),
            "SQLALCHEMY_ENGINE_OPTIONS": engine_options(True),
            "SEARCH_STATEMENT_TIMEOUT_MS": 1717,
        }
    )
    client = behind.test_client()
    with behind.app_context():
        assert isinstance(db.engine.pool, NullPool)
    for name in ("bouncer1", "bouncer2"):
        body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
        assert client.post("/api/v1/auth/register", json=body).status_code == 201
    pair = client.post("/api/v1/auth/login", json={"login": "bouncer1", "password": PASSWORD}).get_json()
    headers = {"Authorization": f"Bearer {pair['access_token']}"}
    other = client.get("/api/v1/users?q=bouncer2").get_json()["items"][0]["id"]
    assert client.put(f"/api/v1/users/{other}/follow", headers=headers).status_code == 204
    created = client.post("/api/v1/posts", json={"title": "Via PgBouncer", "body": "pooled"}, headers=headers)
    assert created.status_code == 201
    etag = created.headers["ETag"]
    post_url = created.headers["Location"]
    assert client.patch(post_url, json={"title": "Edited"}, headers={**headers, "If-Match": etag}).status_code == 200
    assert client.get("/api/v1/posts?q=pooled").get_json()["items"][0]["title"] == "Edited"
    with behind.app_context():  # the search's timeout ended with its transaction
        shown = set()
        for _ in range(8):  # a transaction each: PgBouncer's server connections in turn
            shown.add(db.session.scalar(text("SHOW statement_timeout")))
            db.session.rollback()
        assert "1717ms" not in shown
    assert client.get(f"/api/v1/users/{other}/followers").status_code == 200
    assert client.get("/api/v1/feed", headers=headers).status_code == 200
    refreshed = client.post("/api/v1/auth/refresh", headers={"Authorization": f"Bearer {pair['refresh_token']}"})
    assert refreshed.status_code == 200
    export = client.post("/api/v1/users/me/export", headers=headers).get_json()
    with behind.app_context():
        assert jobs.run(export["id"]) == "succeeded"
    assert client.post("/api/v1/auth/logout", headers=headers).status_code == 204
    assert client.get("/api/v1/users/me", headers=headers).status_code == 401
    assert client.get("/readyz").status_code == 200
