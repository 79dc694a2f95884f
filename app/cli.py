"""`flask` admin commands: `flask users ...`, `flask seed`, `flask cache ...`, `flask jobs ...`,
`flask db pool-status`. Each parses its options, calls service functions and prints."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click
import psycopg
import redis.exceptions
import sqlalchemy.exc
from flask import Flask, current_app
from flask.cli import AppGroup
from flask_migrate.cli import db as db_cli

from app import cache, seed
from app.admin import service as admin
from app.auth import service as auth
from app.auth.schemas import RegisterSchema
from app.errors import APIError
from app.jobs import service as jobs
from app.pool_status import pool_status
from app.posts import imports
from app.users import service as users

users_cli = AppGroup("users", help="Manage accounts.")


@users_cli.command("create-admin")
@click.option("--username", prompt=True)
@click.option("--email", prompt=True)
@click.password_option(envvar="ADMIN_PASSWORD", help="or set ADMIN_PASSWORD; prompted when absent")
def create_admin(username: str, email: str, password: str) -> None:
    """Create an administrator account."""
    errors = RegisterSchema().validate({"username": username, "email": email, "password": password})
    if errors:
        raise click.UsageError("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in errors.items()))
    user = _cli_call(admin.create_admin, username, email, password)
    click.echo(f"admin {user.username} created (id {user.id})")


@users_cli.command("set-role")
@click.argument("username")
@click.argument("role", type=click.Choice(admin.ROLES))
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


@users_cli.command("delete")
@click.argument("username")
@click.confirmation_option(prompt="Delete this account and all its posts, follows and jobs for good?")
def delete_user(username: str) -> None:
    """Delete USERNAME: refused and hidden at once, then every row of theirs removed here
    (with a progress bar); their username and email are free again after."""
    _run_with_bar(_cli_call(admin.delete_now, username), f"deleting {username}")


def _cli_call(func, *args, **kwargs):
    try:
        return func(*args, **kwargs)
    except APIError as exc:
        raise click.ClickException(exc.detail) from None


@click.command("seed")
@click.option("--users", "n_users", default=50, show_default=True, help="users to create")
@click.option("--posts", "n_posts", default=10, show_default=True, help="posts per user")
@click.option("--follows", "n_follows", default=10, show_default=True, help="follows per new user")
@click.option("--demo", is_flag=True, help="demo data for `make run`: an admin too; skipped when users exist")
@click.option("--seed", "rng_seed", default=1, show_default=True, help="random seed")
def seed_command(n_users: int, n_posts: int, n_follows: int, demo: bool, rng_seed: int) -> None:
    """Load generated users (user<N>), posts and follows in bulk; all share one password."""
    if demo and seed.has_users():
        path = Path(current_app.instance_path) / "demo-logins.txt"
        click.echo(f"demo data already loaded (`make reset` starts over); logins: {path}")
        return
    with click.progressbar(length=n_users, label="users and posts") as bar:
        done = seed.seed(n_users, n_posts, n_follows, rng_seed=rng_seed, with_admin=demo, progress=bar.update)
    click.echo(f"seeded {done.users} users, {done.posts} posts, {done.follows} follows")
    logins = [f"admin: login=admin password={done.admin_password}"] if done.admin_password else []
    if done.users:
        logins.append(f"users: login=user{done.first} .. user{done.first + done.users - 1} password={done.password}")
    click.echo("\nLogins:\n  " + "\n  ".join(logins))
    if demo:
        _remember_demo_logins(logins)


def _remember_demo_logins(logins: list[str]) -> None:
    """Keep the demo logins in the instance folder, readable by the owner only."""
    path = Path(current_app.instance_path) / "demo-logins.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(logins) + "\n")
    path.chmod(0o600)
    click.echo(f"(kept in {path})")


@db_cli.command("pool-status")
def pool_status_command() -> None:
    """The pool settings, and PostgreSQL's own count of the connections open to it.

    A CLI process has a pool of its own; what the web processes' pools hold shows in
    PostgreSQL (by application name) and, per process, on /metrics.
    """
    status = pool_status()
    if status.settings is None:
        click.echo("no pool in the app (DB_PGBOUNCER): PgBouncer pools the connections")
    else:
        options = status.settings
        click.echo(
            f"each process keeps up to {options['pool_size']} connections, opens up to "
            f"{options['max_overflow']} more while busy, waits {options['pool_timeout']} s for a free one "
            f"(then answers 503), and replaces each after {options['pool_recycle']} s"
        )
    click.echo(f"this process: {status.this_process}")
    click.echo(f"connections open to this database, by application (the server allows {status.max_connections}):")
    _table(("APPLICATION", "STATE", "CONNECTIONS"), [(name, state, str(n)) for name, state, n in status.connections])


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
    with click.progressbar(length=job.progress_total or 1, label=label) as bar:

        def advance(done: int, total: int | None) -> None:
            bar.length = total or bar.length
            bar.update(done - bar.pos)

        status = jobs.run(job.id, on_progress=advance)
    job = admin.job_as_stored(job.id)
    summary = {k: v for k, v in (job.result or {}).items() if k != "errors"}
    click.echo(f"job {job.id}: {status}  {_json(summary)}")
    for report in (job.result or {}).get("errors", [])[:20]:
        click.echo(f"  line {report['line']}: {_json(report['errors'])}")
    if job.error:
        raise click.ClickException(job.error["detail"])


@jobs_cli.command("import-posts")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--user", "username", required=True, help="the author of the imported posts")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), help="default: from the file name")
def import_posts(path: str, username: str, fmt: str | None) -> None:
    """Import posts from a JSON Lines or CSV file, with a progress bar."""
    user = _cli_call(admin.find_user, username)
    with Path(path).open("rb") as upload:
        job = _cli_call(imports.start, user.id, upload, Path(path).name, "", fmt, queue=False)
    _run_with_bar(job, f"importing {Path(path).name}")


@jobs_cli.command("recount")
def recount() -> None:
    """Recompute every stored counter, with a progress bar."""
    _run_with_bar(users.start_recount_job(queue=False), "recounting")


@jobs_cli.command("list")
@click.option("--limit", default=20, show_default=True)
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed"]))
def list_jobs(limit: int, status: str | None) -> None:
    """The newest jobs of everyone."""
    rows = [
        (
            str(job.id),
            job.kind,
            job.status,
            f"{job.progress_done}/{job.progress_total if job.progress_total is not None else '?'}",
            owner or "-",
            f"{job.created_at:%Y-%m-%d %H:%M:%S}",
        )
        for job, owner in admin.newest_jobs(limit=limit, status=status)
    ]
    if not rows:
        click.echo(f"no {status} jobs" if status else "no jobs")
        return
    _table(("ID", "KIND", "STATUS", "PROGRESS", "OWNER", "CREATED (UTC)"), rows)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A header row and left-aligned columns, each as wide as its widest cell."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _json(value) -> str:
    """A job's report as JSON (what the API shows), not Python's repr."""
    return json.dumps(value, ensure_ascii=False, default=str)


# -- a backing service that cannot be reached: one line and what to do, no traceback ----

UNREACHABLE_HINT = {
    "PostgreSQL": 'run the command under make (`make run` starts the servers; `eval "$(make -s services-up)"` '
    "points this shell at them), or set DATABASE_URL",
    "Redis": 'run the command under make (`eval "$(make -s services-up)"` points this shell at the '
    "servers), or set REDIS_URL",
}


def unreachable_service(error: BaseException) -> tuple[str, str] | None:
    """(service, reason) when `error` says PostgreSQL or Redis could not be reached, else None.

    A plain psycopg.OperationalError is a failed connection; its subclasses are errors
    the server reported (a cancelled statement ...), which keep their traceback.
    """
    if isinstance(error, sqlalchemy.exc.OperationalError) and type(error.orig) is psycopg.OperationalError:
        return "PostgreSQL", str(error.orig).strip().splitlines()[0]
    if isinstance(error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return "Redis", str(error).strip().splitlines()[0]
    return None


def _reporting_unreachable_services(callback):
    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except Exception as error:
            found = unreachable_service(error)
            if found is None:
                raise
            service, reason = found
            raise click.ClickException(f"cannot reach {service} ({reason}); {UNREACHABLE_HINT[service]}") from None

    wrapper.reports_unreachable_services = True
    return wrapper


def report_unreachable_services(group: click.Group) -> None:
    """Wrap every command of `group` (and of its subgroups) once."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            report_unreachable_services(command)
        elif command.callback and not getattr(command.callback, "reports_unreachable_services", False):
            command.callback = _reporting_unreachable_services(command.callback)


def register_cli(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(cache_cli)
    app.cli.add_command(jobs_cli)
    app.cli.add_command(seed_command)
    report_unreachable_services(app.cli)
    # `flask db` is Flask-Migrate's group (pool-status joins it above)
    report_unreachable_services(db_cli)
