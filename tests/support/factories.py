"""factory_boy factories that write through db.session and keep the counters true.

Each factory call commits: in the test harness that releases a savepoint inside the
test's outer transaction, so a request that fails and rolls back cannot take the
test's data with it (the test and its requests share one app context, so one session).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import factory
from argon2 import PasswordHasher

from app.db import db
from app.models import Follow, Post, Role, User
from app.users.service import bump_counters

PASSWORD = "correct horse battery staple"
# what anyone may see of a user: all a public view or a cache entry may hold
PUBLIC_PROFILE_FIELDS = {
    "id",
    "username",
    "display_name",
    "bio",
    "created_at",
    "post_count",
    "follower_count",
    "following_count",
}
# hashed once, with the test profile's cheap argon2 parameters
PASSWORD_HASH = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)

# Each row a factory writes gets its own time, a millisecond after the last one's: left to
# the column default, every row of a test would share its transaction's now(), and lists
# ordered by time would be ordered by id alone. The times lie in the past, so a row a
# request writes (now()) is newer than any factory row.
_EPOCH = datetime.now(UTC) - timedelta(days=1)
_ticks = itertools.count(1)


def next_timestamp() -> datetime:
    return _EPOCH + timedelta(milliseconds=next(_ticks))


class _Base(factory.Factory):
    class Meta:
        abstract = True

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        obj = model_class(*args, **kwargs)
        db.session.add(obj)
        db.session.flush()
        cls._count(obj)
        db.session.commit()
        return obj

    @classmethod
    def _count(cls, obj) -> None:
        """Keep the stored counters true, as the service functions do."""


class UserFactory(_Base):
    class Meta:
        model = User

    username = factory.Sequence(lambda n: f"user_{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password_hash = PASSWORD_HASH
    display_name = factory.LazyAttribute(lambda u: u.username.replace("_", " ").title())
    bio = "Hello."
    role = Role.USER.value
    is_active = True
    created_at = factory.LazyFunction(next_timestamp)
    updated_at = factory.SelfAttribute("created_at")


class AdminFactory(UserFactory):
    role = Role.ADMIN.value


class PostFactory(_Base):
    class Meta:
        model = Post

    author = factory.SubFactory(UserFactory)
    title = factory.Sequence(lambda n: f"Post number {n}")
    body = "Some text about postgres and redis."
    created_at = factory.LazyFunction(next_timestamp)
    updated_at = factory.SelfAttribute("created_at")

    @classmethod
    def _count(cls, post) -> None:
        bump_counters(post.author_id, post_count=1)


class FollowFactory(_Base):
    class Meta:
        model = Follow

    follower_id = factory.LazyFunction(lambda: UserFactory().id)
    followed_id = factory.LazyFunction(lambda: UserFactory().id)
    created_at = factory.LazyFunction(next_timestamp)

    @classmethod
    def _count(cls, follow) -> None:
        bump_counters(follow.follower_id, following_count=1)
        bump_counters(follow.followed_id, follower_count=1)
