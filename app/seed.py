"""Generated users (user<N>), posts and follows in bulk, for demos and load tests (`flask seed`)."""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select

from app import cache
from app.admin import service as admin
from app.auth import service as auth
from app.db import db
from app.models import Follow, Post, User
from app.users import service as users

WORDS = """
postgres redis celery flask worker cache query index queue token profile feed pool latency backup
deploy schema migration cursor page search vector shard replica lock commit rollback request
response header payload gateway service health metric trace
""".split()
CHUNK = 500  # users per INSERT and per commit


@dataclass(frozen=True)
class Seeded:
    password: str  # every generated user's
    first: int  # the first new user is user<first>
    users: int
    posts: int
    follows: int
    admin_password: str | None  # the admin's own (None: no admin made)


def has_users() -> bool:
    return bool(db.session.scalar(select(func.count()).select_from(User)))


def seed(
    n_users: int,
    n_posts: int,
    n_follows: int,
    *,
    rng_seed: int,
    with_admin: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Seeded:
    """Insert `n_users` users with `n_posts` posts each and `n_follows` follows each (and an
    `admin` when `with_admin`), then recount every counter. `progress(users)` is called
    after each committed chunk."""
    rng = random.Random(rng_seed)
    password = secrets.token_urlsafe(12)
    first = db.session.scalar(select(func.coalesce(func.max(User.id), 0))) + 1
    # its own password: knowing a demo user's does not give the admin's
    admin_password = secrets.token_urlsafe(12) if with_admin else None
    if admin_password:
        admin.create_admin("admin", "admin@example.com", admin_password)
    password_hash = auth.hash_password(password)
    now = datetime.now(UTC)
    new_ids: list[int] = []
    for chunk in range(first, first + n_users, CHUNK):
        numbers = range(chunk, min(chunk + CHUNK, first + n_users))
        ids = list(db.session.scalars(insert(User).returning(User.id), _user_rows(rng, numbers, password_hash, now)))
        posts = _post_rows(rng, ids, n_posts, now)
        if posts:
            db.session.execute(insert(Post), posts)
        db.session.commit()
        new_ids += ids
        if progress:
            progress(len(ids))
    follows = _follow_rows(rng, new_ids, list(db.session.scalars(select(User.id))), n_follows)
    for chunk in range(0, len(follows), 5000):
        db.session.execute(insert(Follow), follows[chunk : chunk + 5000])
    db.session.commit()
    users.recount_counters()
    cache.invalidate(cache.users_key(), cache.newest_posts_key())  # written here, not by the services
    return Seeded(password, first, n_users, n_users * n_posts, len(follows), admin_password)


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize()


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
