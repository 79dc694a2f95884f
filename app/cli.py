"""`flask` admin commands: `flask users create-admin`, `flask seed`."""

from __future__ import annotations

import random
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from flask_migrate.cli import db as db_cli
from sqlalchemy import func, insert, select, text

from app import cache
from app.admin import service as admin
from app.auth import service as auth
from app.db import db
from app.errors import APIError
from app.models import Follow, Post, Role, User
from app.users import service as users

users_cli = AppGroup("users", help="Manage accounts.")


@users_cli.command("create-admin")
@click.option("--username", prompt=True)
@click.option("--email", prompt=True)
@click.password_option(envvar="ADMIN_PASSWORD", help="or set ADMIN_PASSWORD; prompted when absent")
def create_admin(username: str, email: str, password: str) -> None:
    """Create an administrator account."""
    from app.auth.schemas import RegisterSchema

    errors = RegisterSchema().validate({"username": username, "email": email, "password": password})
    if errors:
        raise click.UsageError("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in errors.items()))
    try:
        user = auth.register(username, email, password)
    except APIError as exc:
        raise click.ClickException(exc.detail) from None
    user.role = Role.ADMIN.value
    db.session.commit()
    click.echo(f"admin {user.username} created (id {user.id})")


@users_cli.command("set-role")
@click.argument("username")
@click.argument("role", type=click.Choice([r.value for r in Role]))
def set_role(username: str, role: str) -> None:
    """Make USERNAME a `user` or an `admin`."""
    user = _cli_call(admin.find_user, username)
    admin.set_account(user.id, role=role)
    click.echo(f"{user.username} is now {role}")


@users_cli.command("deactivate")
@click.argument("username")
def deactivate(username: str) -> None:
    """Stop USERNAME from logging in; their sessions end at once."""
    user = _cli_call(admin.find_user, username)
    admin.set_account(user.id, is_active=False)
    click.echo(f"{user.username} deactivated; sessions ended")


@users_cli.command("activate")
@click.argument("username")
def activate(username: str) -> None:
    """Let a deactivated USERNAME log in again."""
    user = _cli_call(admin.find_user, username)
    admin.set_account(user.id, is_active=True)
    click.echo(f"{user.username} activated")


@users_cli.command("revoke-sessions")
@click.argument("username")
def revoke_sessions(username: str) -> None:
    """End every session of USERNAME (every token they hold stops working)."""
    user = _cli_call(admin.find_user, username)
    ended = auth.revoke_all_sessions(user.id, reason="revoked-by-admin")
    click.echo(f"{ended} session(s) of {user.username} ended")


def _cli_call(func, *args, **kwargs):
    try:
        return func(*args, **kwargs)
    except APIError as exc:
        raise click.ClickException(exc.detail) from None


WORDS = """
postgres redis celery flask worker cache query index queue token profile feed pool latency backup
deploy schema migration cursor page search vector shard replica lock commit rollback request
response header payload gateway service health metric trace
""".split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize()


@click.command("seed")
@click.option("--users", "n_users", default=50, show_default=True, help="users to create")
@click.option("--posts", "n_posts", default=10, show_default=True, help="posts per user")
@click.option("--follows", "n_follows", default=10, show_default=True, help="follows per new user")
@click.option("--demo", is_flag=True, help="demo data for `make run`: an admin too; skipped when users exist")
@click.option("--seed", "rng_seed", default=1, show_default=True, help="random seed")
def seed(n_users: int, n_posts: int, n_follows: int, demo: bool, rng_seed: int) -> None:
    """Load generated users (user<N>), posts and follows in bulk; all share one password."""
    if demo and db.session.scalar(select(func.count()).select_from(User)):
        path = Path(current_app.instance_path) / "demo-logins.txt"
        click.echo(f"demo data already loaded (`make reset` starts over); logins: {path}")
        return
    rng = random.Random(rng_seed)
    password = secrets.token_urlsafe(12)
    logins = []
    first = db.session.scalar(select(func.coalesce(func.max(User.id), 0))) + 1
    if demo:
        admin = auth.register("admin", "admin@example.com", password)
        admin.role = Role.ADMIN.value
        db.session.commit()
        logins.append(f"admin: login=admin password={password}")
    password_hash = auth.hash_password(password)
    now = datetime.now(UTC)
    new_ids: list[int] = []
    with click.progressbar(length=n_users, label="users and posts") as bar:
        for chunk in range(first, first + n_users, 500):
            numbers = range(chunk, min(chunk + 500, first + n_users))
            user_rows = _user_rows(rng, numbers, password_hash, now)
            ids = list(db.session.scalars(insert(User).returning(User.id), user_rows))
            posts = _post_rows(rng, ids, n_posts, now)
            if posts:
                db.session.execute(insert(Post), posts)
            db.session.commit()
            new_ids += ids
            bar.update(len(ids))
    follows = _follow_rows(rng, new_ids, list(db.session.scalars(select(User.id))), n_follows)
    for chunk in range(0, len(follows), 5000):
        db.session.execute(insert(Follow), follows[chunk : chunk + 5000])
    db.session.commit()
    users.recount_counters()
    cache.invalidate(cache.users_key(), cache.newest_posts_key())  # written here, not by the services
    click.echo(f"seeded {n_users} users, {n_users * n_posts} posts, {len(follows)} follows")
    if n_users:
        logins.append(f"users: login=user{first} .. user{first + n_users - 1} password={password}")
    click.echo("\nLogins:\n  " + "\n  ".join(logins))
    if demo:
        _remember_demo_logins(logins)


def _user_rows(rng: random.Random, numbers: range, password_hash: str, now: datetime) -> list[dict]:
    rows = []
    for n in numbers:
        joined = now - timedelta(days=rng.randint(30, 365))
        rows.append(
            {
                "username": f"user{n}",
                "email": f"user{n}@example.com",
                "password_hash": password_hash,
                "display_name": f"{_sentence(rng, 1)} {rng.choice(WORDS).capitalize()}",
                "bio": _sentence(rng, 8),
                "created_at": joined,
                "updated_at": joined,
            }
        )
    return rows


def _post_rows(rng: random.Random, author_ids: list[int], per_author: int, now: datetime) -> list[dict]:
    rows = []
    for author_id in author_ids:
        for _ in range(per_author):
            written = now - timedelta(minutes=rng.randint(0, 60 * 24 * 30))
            sentences = (_sentence(rng, rng.randint(6, 14)) for _ in range(rng.randint(1, 4)))
            rows.append(
                {
                    "author_id": author_id,
                    "title": _sentence(rng, rng.randint(3, 8)),
                    "body": ". ".join(sentences) + ".",
                    "created_at": written,
                    "updated_at": written,
                }
            )
    return rows


def _follow_rows(rng: random.Random, follower_ids: list[int], everyone: list[int], per_user: int) -> list[dict]:
    rows = []
    for follower in follower_ids:
        others = [u for u in rng.sample(everyone, min(per_user + 1, len(everyone))) if u != follower]
        rows += [{"follower_id": follower, "followed_id": followed} for followed in others[:per_user]]
    return rows


def _remember_demo_logins(logins: list[str]) -> None:
    """Keep the demo logins in the instance folder, readable by the owner only."""
    path = Path(current_app.instance_path) / "demo-logins.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(logins) + "\n")
    path.chmod(0o600)
    click.echo(f"(kept in {path})")


@db_cli.command("pool-status")
def pool_status() -> None:
    """The pool settings, and PostgreSQL's own count of the connections open to it.

    A CLI process has a pool of its own; what the web processes' pools hold shows in
    PostgreSQL (by application name) and, per process, on /metrics.
    """
    options = current_app.config["SQLALCHEMY_ENGINE_OPTIONS"]
    if current_app.config["DB_PGBOUNCER"]:
        click.echo("no pool in the app (DB_PGBOUNCER): PgBouncer pools the connections")
    else:
        click.echo(
            f"pool per process: size {options['pool_size']}, max overflow {options['max_overflow']}, "
            f"timeout {options['pool_timeout']} s, recycle {options['pool_recycle']} s"
        )
    click.echo(f"this process: {db.engine.pool.status()}")
    rows = db.session.execute(
        text(
            "SELECT coalesce(nullif(application_name, ''), '?') AS app, coalesce(state, '?') AS state, count(*) "
            "FROM pg_stat_activity WHERE datname = current_database() GROUP BY 1, 2 ORDER BY 1, 2"
        )
    ).all()
    limit = db.session.scalar(text("SHOW max_connections"))
    click.echo(f"server connections to this database (max_connections {limit}):")
    for app_name, state, count in rows:
        click.echo(f"  {app_name:<24} {state:<20} {count}")


cache_cli = AppGroup("cache", help="The Redis cache of public profiles and posts.")


@cache_cli.command("stats")
def cache_stats() -> None:
    """Hits, misses and hit rate since the last `flask cache clear`."""
    numbers = cache.stats()
    click.echo(f"hits {numbers['hits']}  misses {numbers['misses']}  hit rate {numbers['hit_rate']:.1%}")


@cache_cli.command("clear")
def cache_clear() -> None:
    """Drop every cached profile and post, and reset the counters."""
    click.echo(f"{cache.clear()} cached entries removed")


jobs_cli = AppGroup("jobs", help="Imports, recounts and the job list (run here, not by a worker).")


def _run_with_bar(job, label: str) -> None:
    from app.jobs import service as jobs

    with click.progressbar(length=job.progress_total or 1, label=label) as bar:

        def advance(done: int, total: int | None) -> None:
            bar.length = total or bar.length
            bar.update(done - bar.pos)

        status = jobs.run(job.id, on_progress=advance)
    db.session.expire_all()
    job = db.session.get(type(job), job.id)
    summary = {k: v for k, v in (job.result or {}).items() if k != "errors"}
    click.echo(f"job {job.id}: {status}  {summary}")
    for report in (job.result or {}).get("errors", [])[:20]:
        click.echo(f"  line {report['line']}: {report['errors']}")
    if job.error:
        raise click.ClickException(job.error["detail"])


@jobs_cli.command("import-posts")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--user", "username", required=True, help="the author of the imported posts")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), help="default: from the file name")
def import_posts(path: str, username: str, fmt: str | None) -> None:
    """Import posts from a JSON Lines or CSV file, with a progress bar."""
    from pathlib import Path

    from app.posts import imports

    user = _cli_call(admin.find_user, username)
    content = Path(path).read_bytes()
    job = _cli_call(imports.start, user.id, content, Path(path).name, "", fmt, queue=False)
    _run_with_bar(job, f"importing {Path(path).name}")


@jobs_cli.command("recount")
def recount() -> None:
    """Recompute every stored counter, with a progress bar."""
    from app.jobs import service as jobs
    from app.models import JobKind

    _run_with_bar(jobs.create(JobKind.RECOUNT, None, queue=False), "recounting")


@jobs_cli.command("list")
@click.option("--limit", default=20, show_default=True)
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed"]))
def list_jobs(limit: int, status: str | None) -> None:
    """The newest jobs of everyone."""
    from app.models import Job

    stmt = select(Job, User.username).outerjoin(User, User.id == Job.owner_id)
    if status:
        stmt = stmt.where(Job.status == status)
    for job, owner in db.session.execute(stmt.order_by(Job.created_at.desc()).limit(limit)):
        total = job.progress_total if job.progress_total is not None else "?"
        click.echo(
            f"{job.id}  {job.kind:<12} {job.status:<9} {job.progress_done}/{total}  "
            f"{owner or '-':<16} {job.created_at:%Y-%m-%d %H:%M:%S}"
        )


def register_cli(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(cache_cli)
    app.cli.add_command(jobs_cli)
    app.cli.add_command(seed)
