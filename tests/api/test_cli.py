"""`flask users create-admin` and `flask seed`."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.db import db
from app.models import Follow, Post, User
from tests.support.factories import PASSWORD, UserFactory


def count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def test_create_admin_from_options_and_env(app, client):
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["users", "create-admin", "--username", "root_admin", "--email", "root@example.com"],
        env={"ADMIN_PASSWORD": PASSWORD},
    )
    assert result.exit_code == 0, result.output
    admin = db.session.scalars(select(User).where(User.username == "root_admin")).one()
    assert admin.role == "admin"
    login = client.post("/api/v1/auth/login", json={"login": "root_admin", "password": PASSWORD})
    assert login.status_code == 200


def test_create_admin_prompts_for_the_password(app):
    result = app.test_cli_runner().invoke(
        args=["users", "create-admin", "--username", "prompted", "--email", "p@example.com"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert count(User) == 1


def test_create_admin_refuses_bad_input_and_taken_names(app):
    runner = app.test_cli_runner()
    weak = runner.invoke(args=["users", "create-admin", "--username", "x", "--email", "bad", "--password", "short"])
    assert weak.exit_code != 0
    assert "username" in weak.output and "password" in weak.output
    UserFactory(username="taken")
    taken = runner.invoke(
        args=["users", "create-admin", "--username", "taken", "--email", "t@example.com", "--password", PASSWORD]
    )
    assert taken.exit_code != 0
    assert "already taken" in taken.output
    assert count(User) == 1


def test_seed_loads_users_posts_follows_with_true_counters(app):
    result = app.test_cli_runner().invoke(args=["seed", "--users", "30", "--posts", "3", "--follows", "4"])
    assert result.exit_code == 0, result.output
    assert "users: login=user" in result.output and "password=" in result.output
    assert (count(User), count(Post), count(Follow)) == (30, 90, 120)
    db.session.expire_all()
    for user in db.session.scalars(select(User)):
        assert user.post_count == 3
        assert user.following_count == 4
        assert user.follower_count == db.session.scalar(
            select(func.count()).select_from(Follow).where(Follow.followed_id == user.id)
        )


def test_demo_seed_runs_once_and_keeps_the_logins(app, tmp_path, monkeypatch, client):
    monkeypatch.setattr(app, "instance_path", str(tmp_path))
    runner = app.test_cli_runner()
    first = runner.invoke(args=["seed", "--demo", "--users", "5", "--posts", "2"])
    assert first.exit_code == 0, first.output
    logins = (tmp_path / "demo-logins.txt").read_text()
    assert "login=admin" in logins
    admin_password = logins.split("admin: login=admin password=")[1].split()[0]
    assert client.post("/api/v1/auth/login", json={"login": "admin", "password": admin_password}).status_code == 200
    first_user, password = logins.split("users: login=")[1].split(" password=")
    first_user, password = first_user.split()[0], password.split()[0]
    assert password != admin_password  # the admin has a password of its own
    assert client.post("/api/v1/auth/login", json={"login": first_user, "password": password}).status_code == 200
    assert client.post("/api/v1/auth/login", json={"login": "admin", "password": password}).status_code == 401
    again = runner.invoke(args=["seed", "--demo"])
    assert "already loaded" in again.output
    assert count(User) == 6


def test_jobs_list_says_when_nothing_matches(app):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["jobs", "list"]).output == "no jobs\n"
    assert runner.invoke(args=["jobs", "list", "--status", "failed"]).output == "no failed jobs\n"


def test_jobs_list_prints_a_header_and_aligned_columns(app):
    from app.users import service as users

    UserFactory(username="a_rather_long_username")
    users.start_recount_job(queue=False)
    header, row = app.test_cli_runner().invoke(args=["jobs", "list"]).output.splitlines()
    assert header.split() == ["ID", "KIND", "STATUS", "PROGRESS", "OWNER", "CREATED", "(UTC)"]
    # each value starts under its column's name
    assert row[header.index("KIND") :].startswith("recount")
    assert row[header.index("STATUS") :].startswith("queued")
    assert row[header.index("OWNER") :].startswith("-")


@pytest.mark.parametrize(
    ("overrides", "args", "service", "setting"),
    [
        (
            {"SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://nobody@127.0.0.1:1/none"},
            ["jobs", "list"],
            "PostgreSQL",
            "DATABASE_URL",
        ),
        (
            {"SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://nobody@127.0.0.1:1/none"},
            ["db", "upgrade"],
            "PostgreSQL",
            "DATABASE_URL",
        ),
        (
            {"REDIS_URL": "redis://127.0.0.1:1/0", "CACHE_REDIS_URL": "redis://127.0.0.1:1/0"},
            ["cache", "stats"],
            "Redis",
            "REDIS_URL",
        ),
    ],
)
@pytest.mark.no_transaction  # the suite's session is bound to a live connection
def test_an_unreachable_service_is_one_line_with_what_to_do(overrides, args, service, setting):
    from app.factory import create_app

    result = create_app({"APP_ENV": "test", **overrides}).test_cli_runner().invoke(args=args)
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert line.startswith(f"Error: cannot reach {service} (") and "make" in line and setting in line
