"""The migrations: up, down and up again on an empty database; they match the models."""

from __future__ import annotations

import warnings

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from app.db import db
from app.factory import create_app
from tests.conftest import drop_database, recreate_database


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


@pytest.mark.no_transaction
def test_upgrade_downgrade_upgrade(empty_db_app):
    with empty_db_app.app_context():
        upgrade()
        assert tables() == {"users", "posts", "follows", "sessions", "revoked_tokens", "jobs", "job_files"}
        downgrade(revision="base")
        assert tables() == set()
        upgrade()
        assert tables() == {"users", "posts", "follows", "sessions", "revoked_tokens", "jobs", "job_files"}
        with db.engine.connect() as conn, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # alembic cannot compare expression indexes; it says so
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
        assert diff == []
