"""Deleting an account: hidden at once, removed in the background.

At once, in one commit: the account is marked deleted and inactive and every session of
it ends (the mechanism deactivation uses: sessions revoked and mirrored, the account
check on every token), and a job is recorded; after the commit the cache forgets the
profile, its posts and every list and feed page that showed them. Then the job, on the
long queue, deletes the rows in batches of ACCOUNT_DELETE_BATCH, committing between
them so other requests never wait long on its locks: posts, follows (the other side's
counters fixed), sessions, mailed tokens, outbox rows, jobs with their files; the user
row last, which frees the username and email. A job run again after a crash goes on
where the last commit left it.
"""

from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy import Delete, delete, func, select, update

from app import cache
from app.auth import revocation
from app.auth.service import revoke_all_sessions
from app.db import db
from app.errors import NotFound
from app.jobs import service as jobs
from app.jobs.service import JobFailed
from app.models import AccountToken, AuthSession, Follow, Job, JobKind, OutboxMail, Post, User
from app.posts.service import author_visibility_changed

log = logging.getLogger(__name__)

# a job's files are up to IMPORT_MAX_BYTES of chunks: fewer jobs per batch than rows
JOBS_PER_BATCH = 20


def delete_account(user_id: int, *, reason: str, queue: bool = True) -> Job:
    """Hide the account now and queue the job that removes it (unless `queue` is false:
    the CLI runs it itself); 404 if there is no such account or it is already being
    deleted."""
    user = db.session.get(User, user_id, with_for_update=True, populate_existing=True)
    if user is None or user.deleted_at is not None:
        db.session.rollback()
        raise NotFound(f"No user with id {user_id}.")
    user.is_active = False
    user.deleted_at = func.now()
    user.version = User.version + 1
    user.updated_at = func.now()
    job = jobs.new(JobKind.DELETE_USER, None, params={"user_id": user_id})
    # the flag, the job and the end of every session in one commit
    revoke_all_sessions(user_id, reason=reason)
    revocation.mark_accounts_changed([user_id])  # no process trusts its memo of the account
    author_visibility_changed(user_id)
    log.info("account deletion started", extra={"user_id": user_id, "reason": reason, "job": str(job.id)})
    if queue:
        jobs.enqueue(job.id)
    return job


def _batch_of(model, column, user_id: int, size: int, order=()) -> Delete:
    """DELETE at most `size` rows of `model` whose `column` is the user (by primary key)."""
    primary = tuple(model.__table__.primary_key.columns)
    chosen = select(*primary).where(column == user_id).order_by(*order).limit(size)
    if len(primary) == 1:
        return delete(model).where(primary[0].in_(chosen))
    return delete(model).where(func.row(*primary).in_(chosen))


def _rows_of(model, column, *, most: int | None = None, order=()):
    """A step deleting a batch of `model`'s rows of the user: (how many, no one else touched)."""

    def step(user_id: int, size: int) -> tuple[int, list[int]]:
        return db.session.execute(_batch_of(model, column, user_id, min(size, most or size), order)).rowcount, []

    return step


def _follows(*, outgoing: bool):
    return lambda user_id, size: _delete_follows(user_id, size, outgoing=outgoing)


def _delete_follows(user_id: int, size: int, *, outgoing: bool) -> tuple[int, list[int]]:
    """A batch of the user's follows (whom they follow, or who follows them), and the
    other side's counter, its rows locked in id order (as follow() locks them)."""
    mine, other = (Follow.follower_id, Follow.followed_id) if outgoing else (Follow.followed_id, Follow.follower_id)
    chosen = select(Follow.follower_id, Follow.followed_id).where(mine == user_id).limit(size)
    others = db.session.scalars(
        delete(Follow).where(func.row(Follow.follower_id, Follow.followed_id).in_(chosen)).returning(other)
    ).all()
    if others:
        db.session.execute(select(User.id).where(User.id.in_(others)).order_by(User.id).with_for_update())
        counter = "follower_count" if outgoing else "following_count"
        db.session.execute(update(User).where(User.id.in_(others)).values({counter: getattr(User, counter) - 1}))
    return len(others), others


# in order: what the others see first (posts, follows), the account row after all
STEPS = (
    # newest first: until they are gone, the first page of /posts reads past them
    ("posts", _rows_of(Post, Post.author_id, order=(Post.created_at.desc(), Post.id.desc()))),
    ("following", _follows(outgoing=True)),
    ("followers", _follows(outgoing=False)),
    ("sessions", _rows_of(AuthSession, AuthSession.user_id)),
    ("tokens", _rows_of(AccountToken, AccountToken.user_id)),
    ("mail", _rows_of(OutboxMail, OutboxMail.user_id)),
    ("jobs", _rows_of(Job, Job.owner_id, most=JOBS_PER_BATCH)),
)


def run_deletion(tracker) -> None:
    """The job: every row of the account, a batch per transaction, then the account."""
    user_id = int(tracker.job.params["user_id"])
    deleted_at = db.session.scalar(select(User.deleted_at).where(User.id == user_id))
    if deleted_at is None and db.session.get(User, user_id) is not None:
        raise JobFailed("This account is not marked for deletion; nothing was deleted.")
    size = current_app.config["ACCOUNT_DELETE_BATCH"]
    counts = tracker.state.setdefault("deleted", {})
    for name, step in STEPS:
        while True:
            count, others = step(user_id, size)
            if not count:
                break
            counts[name] = counts.get(name, 0) + count
            tracker.checkpoint(sum(counts.values()))  # commits the batch
            # their counters changed
            cache.invalidate(*(cache.profile_key(other) for other in others))
    gone = db.session.execute(delete(User).where(User.id == user_id, User.deleted_at.is_not(None))).rowcount
    counts["account"] = counts.get("account", 0) + gone
    tracker.checkpoint(sum(counts.values()))
    cache.invalidate(cache.profile_key(user_id), cache.users_key())
    log.info("account deleted", extra={"user_id": user_id, "deleted": counts})
