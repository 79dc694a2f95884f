"""A user's own data as one JSON document, built by a job (GDPR-style export)."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import current_app
from sqlalchemy import select

from app.db import db
from app.models import Follow, Post, User
from app.users.schemas import PrivateUserSchema, UserSummarySchema

CHUNK = 1000


def run_export(tracker) -> None:
    user = db.session.get(User, tracker.job.owner_id)
    total = user.post_count + user.follower_count + user.following_count
    done = 0
    posts = []
    last_id = 0
    while True:
        chunk = db.session.scalars(
            select(Post).where(Post.author_id == user.id, Post.id > last_id).order_by(Post.id).limit(CHUNK)
        ).all()
        if not chunk:
            break
        posts += [
            {
                "id": p.id,
                "title": p.title,
                "body": p.body,
                "external_id": p.external_id,
                "created_at": p.created_at.isoformat(),
                "updated_at": p.updated_at.isoformat(),
            }
            for p in chunk
        ]
        last_id = chunk[-1].id
        done += len(chunk)
        tracker.checkpoint(done, total)
    summary = UserSummarySchema(many=True)
    followers = db.session.scalars(
        select(User).join(Follow, Follow.follower_id == User.id).where(Follow.followed_id == user.id, User.is_active)
    ).all()
    following = db.session.scalars(
        select(User).join(Follow, Follow.followed_id == User.id).where(Follow.follower_id == user.id, User.is_active)
    ).all()
    document = {
        "exported_at": datetime.now(UTC).isoformat(),
        "profile": PrivateUserSchema().dump(user),
        "posts": posts,
        "followers": summary.dump(followers),
        "following": summary.dump(following),
    }
    tracker.save_file(current_app.json.dumps(document).encode(), "application/json", f"export-{user.username}.json")
    tracker.state.update(posts=len(posts), followers=len(followers), following=len(following))
    done += len(followers) + len(following)
    tracker.checkpoint(done, max(done, total))
