"""A user's own data as one JSON document, built by a job (GDPR-style export).

The document is written as it is read, a page of rows at a time, into the job's result
file (app.jobs.files): however many posts and followers, the worker holds one page and
one chunk of it. A job run again after a crash writes the document afresh. Each user
keeps one export, the newest: a finished export deletes the ones before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from flask import current_app
from sqlalchemy import select

from app.db import db
from app.jobs import files
from app.models import Follow, JobKind, Post, User
from app.users.schemas import PrivateUserSchema, UserSummarySchema

CHUNK = 1000  # users per query, and per checkpoint
POSTS_CHUNK = 250  # posts per query (a post may hold 20,000 characters)

_SUMMARY = UserSummarySchema()


def run_export(tracker) -> None:
    user = db.session.get(User, tracker.job.owner_id)
    username, user_id = user.username, user.id
    total = user.post_count + user.follower_count + user.following_count
    dumps = current_app.json.dumps
    out = tracker.result_file("application/json", f"export-{username}.json")
    out.write(
        f'{{"exported_at":{dumps(datetime.now(UTC).isoformat())},'
        f'"profile":{dumps(PrivateUserSchema().dump(user))},"posts":['.encode()
    )
    done = 0
    counts = {}
    for name, pages in (
        ("posts", _posts(user_id)),
        ("followers", _users(Follow.follower_id, Follow.followed_id, user_id)),
        ("following", _users(Follow.followed_id, Follow.follower_id, user_id)),
    ):
        if name != "posts":
            out.write(f'],"{name}":['.encode())
        counts[name] = 0
        for page in pages:
            out.write((b"," if counts[name] else b"") + b",".join(dumps(item).encode() for item in page))
            counts[name] += len(page)
            done += len(page)
            tracker.checkpoint(done, max(done, total))
    out.write(b"]}")
    out.close()
    files.drop_older_results(user_id, JobKind.EXPORT_USER, tracker.job.id)
    tracker.state.update(counts)
    tracker.checkpoint(done, done)


def _posts(user_id: int) -> Iterator[list[dict]]:
    last_id = 0
    while True:
        rows = db.session.execute(
            select(Post.id, Post.title, Post.body, Post.external_id, Post.created_at, Post.updated_at)
            .where(Post.author_id == user_id, Post.id > last_id)
            .order_by(Post.id)
            .limit(POSTS_CHUNK)
        ).all()
        if not rows:
            return
        yield [
            {
                "id": r.id,
                "title": r.title,
                "body": r.body,
                "external_id": r.external_id,
                "created_at": r.created_at.isoformat(),
                "updated_at": r.updated_at.isoformat(),
            }
            for r in rows
        ]
        last_id = rows[-1].id


def _users(other_side, my_side, user_id: int) -> Iterator[list[dict]]:
    """Active users on the other side of my follows, by id, a page at a time."""
    last_id = 0
    while True:
        users = db.session.scalars(
            select(User)
            .join(Follow, other_side == User.id)
            .where(my_side == user_id, User.is_active, User.id > last_id)
            .order_by(User.id)
            .limit(CHUNK)
        ).all()
        if not users:
            return
        yield [_SUMMARY.dump(u) for u in users]
        last_id = users[-1].id
