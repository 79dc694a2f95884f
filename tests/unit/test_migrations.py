"""The migrations: up, down and up again on an empty database; they match the models."""

from __future__ import annotations

import importlib
import random
import uuid
import warnings

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from app.db import db
from app.factory import create_app
from tests.support.databases import drop_database, recreate_database


@pytest.fixture
def empty_db_app(app, test_db_url):
    url = test_db_url.set(database=f"{test_db_url.database}_migrations")
    recreate_database(url)
    fresh = create_app(
        {
            "APP_ENV": "test",
            "SQLALCHEMY_DATABASE_URI": url.render_as_string(False),
            "REDIS_URL": app.config["REDIS_URL"],
        }
    )
    yield fresh
    with fresh.app_context():
        db.engine.dispose()
    drop_database(url)


def tables() -> set[str]:
    return set(inspect(db.engine).get_table_names()) - {"alembic_version"}


ALL_TABLES = {
    "users",
    "posts",
    "follows",
    "sessions",
    "revoked_tokens",
    "jobs",
    "job_files",
    "job_file_chunks",
    "account_tokens",
    "outbox",
}


@pytest.mark.no_transaction
def test_upgrade_downgrade_upgrade(empty_db_app):
    with empty_db_app.app_context():
        upgrade()
        assert tables() == ALL_TABLES
        downgrade(revision="base")
        assert tables() == set()
        upgrade()
        assert tables() == ALL_TABLES
        with db.engine.connect() as conn, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # alembic cannot compare expression indexes; it says so
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
        assert diff == []


@pytest.mark.no_transaction
def test_0004_moves_job_files_into_chunks_and_back(empty_db_app):
    from sqlalchemy import text

    content = random.Random(4).randbytes(2 * 1024 * 1024 + 5000)  # three chunks, the last short
    whole, empty, purged = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with empty_db_app.app_context():
        upgrade(revision="0003")
        with db.engine.begin() as conn:
            for job_id in (whole, empty, purged):
                conn.execute(text("INSERT INTO jobs (id, kind) VALUES (:id, 'export_user')"), {"id": job_id})
            file = "INSERT INTO job_files (job_id, role, content_type, content) VALUES (:id, :role, 'x', :content)"
            conn.execute(text(file), {"id": whole, "role": "result", "content": content})
            conn.execute(text(file), {"id": empty, "role": "input", "content": b""})
        upgrade(revision="0004")
        with db.engine.begin() as conn:
            chunks = conn.execute(
                text("SELECT data FROM job_file_chunks WHERE job_id = :id ORDER BY seq"), {"id": whole}
            ).scalars()
            assert [len(c) for c in chunks] == [1024 * 1024, 1024 * 1024, len(content) - 2 * 1024 * 1024]
            sizes = dict(conn.execute(text("SELECT job_id, size FROM job_files")).all())
            assert sizes == {whole: len(content), empty: 0}
            conn.execute(
                text(
                    "INSERT INTO job_files (job_id, role, content_type, purged_at) VALUES (:id, 'result', 'x', now())"
                ),
                {"id": purged},
            )
        downgrade(revision="0003")
        with db.engine.begin() as conn:
            back = dict(conn.execute(text("SELECT job_id, content FROM job_files")).all())
        assert back == {whole: content, empty: b""}  # a purged result has nothing to give back


@pytest.mark.no_transaction
def test_queries_are_not_jit_compiled_and_a_non_owner_can_still_migrate(empty_db_app):
    """0007 turns JIT off for the database (new connections see it); a role that does
    not own the database gets a warning, not a failed deploy."""
    from sqlalchemy import text

    jit_off = importlib.import_module("migrations.versions.0007_jit_off")
    with empty_db_app.app_context():
        upgrade()
        db.engine.dispose()
        with db.engine.connect() as conn:
            assert conn.scalar(text("SHOW jit")) == "off"
            role = f"not_owner_{uuid.uuid4().hex[:8]}"
            conn.execute(text(f"CREATE ROLE {role}"))
            try:
                conn.execute(text(f"SET ROLE {role}"))
                conn.connection.dbapi_connection.execute(jit_off.set_jit("on"))  # no error
                conn.execute(text("RESET ROLE"))
            finally:
                conn.rollback()
        with db.engine.connect() as conn:
            assert conn.scalar(text("SHOW jit")) == "off"
