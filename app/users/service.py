"""Profiles, the follow graph and the counters on users."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from werkzeug.datastructures import ETags

from app.api import WithExtras, check_if_match
from app.errors import NotFound, ValidationFailed
from app.extensions import db
from app.models import Follow, Post, User
from app.pagination import Page, keyset_page

RECENT_POSTS = 5


def get_public(user_id: int) -> User:
    """An active user, else 404."""
    user = db.session.get(User, user_id)
    if user is None or not user.is_active:
        raise NotFound(f"No user with id {user_id}.")
    return user


def escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_users(*, limit: int, cursor: str | None, q: str | None = None, include_posts: bool = False) -> Page:
    """Active users by id; `q` matches a prefix of username or display name."""
    stmt = select(User).where(User.is_active)
    if q:
        prefix = escape_like(q.lower()) + "%"
        stmt = stmt.where(or_(func.lower(User.username).like(prefix), func.lower(User.display_name).like(prefix)))
    page = keyset_page(stmt, [User.id], [int], limit=limit, cursor=cursor, descending=False)
    if include_posts:
        newest = recent_posts([user.id for user in page.items])
        page = Page([WithExtras(user, recent_posts=newest[user.id]) for user in page.items], page.next_cursor)
    return page


def recent_posts(user_ids: list[int], per_user: int = RECENT_POSTS) -> dict[int, list[Post]]:
    """The newest posts of each user, in one query for all of them."""
    by_author: dict[int, list[Post]] = {user_id: [] for user_id in user_ids}
    if by_author:
        ranked = (
            select(
                Post,
                func.row_number()
                .over(partition_by=Post.author_id, order_by=(Post.created_at.desc(), Post.id.desc()))
                .label("rank"),
            )
            .where(Post.author_id.in_(list(by_author)))
            .subquery()
        )
        newest = db.aliased(Post, ranked)
        rows = db.session.scalars(
            select(newest).where(ranked.c.rank <= per_user).order_by(ranked.c.author_id, ranked.c.rank)
        )
        for post in rows:
            by_author[post.author_id].append(post)
    return by_author


def update_profile(user_id: int, changes: dict, if_match: ETags | None) -> User:
    """Apply `changes` to the profile under a row lock; 412 when If-Match is stale."""
    user = db.session.get(User, user_id, with_for_update=True, populate_existing=True)
    check_if_match(if_match, user.version)
    for field, value in changes.items():
        setattr(user, field, value)
    user.version = User.version + 1
    user.updated_at = func.now()
    db.session.commit()
    return user


def bump_counters(user_id: int, **deltas: int) -> None:
    """Add `deltas` to a user's stored counters in the current transaction."""
    db.session.execute(
        update(User)
        .where(User.id == user_id)
        .values({name: getattr(User, name) + delta for name, delta in deltas.items()})
    )


def follow(follower_id: int, followed_id: int) -> None:
    """Idempotent: following twice is the same as once."""
    if follower_id == followed_id:
        raise ValidationFailed("You cannot follow yourself.", errors={"user_id": ["Cannot follow yourself."]})
    get_public(followed_id)
    inserted = db.session.execute(
        insert(Follow)
        .values(follower_id=follower_id, followed_id=followed_id)
        .on_conflict_do_nothing()
        .returning(Follow.follower_id)
    ).first()
    if inserted:
        _bump_pair(follower_id, followed_id, +1)
    db.session.commit()


def unfollow(follower_id: int, followed_id: int) -> None:
    """Idempotent: unfollowing someone not followed is a no-op."""
    if follower_id == followed_id:
        raise ValidationFailed("You cannot unfollow yourself.", errors={"user_id": ["Cannot unfollow yourself."]})
    get_public(followed_id)
    deleted = db.session.execute(
        Follow.__table__.delete()
        .where(Follow.follower_id == follower_id, Follow.followed_id == followed_id)
        .returning(Follow.follower_id)
    ).first()
    if deleted:
        _bump_pair(follower_id, followed_id, -1)
    db.session.commit()


def _bump_pair(follower_id: int, followed_id: int, delta: int) -> None:
    # lock the two rows in id order, so two users following each other never deadlock
    for user_id in sorted((follower_id, followed_id)):
        if user_id == follower_id:
            bump_counters(user_id, following_count=delta)
        else:
            bump_counters(user_id, follower_count=delta)


def followers(user_id: int, *, limit: int, cursor: str | None) -> Page:
    """Who follows `user_id`, most recent first."""
    get_public(user_id)
    stmt = (
        select(User, Follow.created_at, Follow.follower_id)
        .join(Follow, Follow.follower_id == User.id)
        .where(Follow.followed_id == user_id, User.is_active)
    )
    return keyset_page(stmt, [Follow.created_at, Follow.follower_id], [datetime, int], limit=limit, cursor=cursor)


def following(user_id: int, *, limit: int, cursor: str | None) -> Page:
    """Whom `user_id` follows, most recent first."""
    get_public(user_id)
    stmt = (
        select(User, Follow.created_at, Follow.followed_id)
        .join(Follow, Follow.followed_id == User.id)
        .where(Follow.follower_id == user_id, User.is_active)
    )
    return keyset_page(stmt, [Follow.created_at, Follow.followed_id], [datetime, int], limit=limit, cursor=cursor)


RECOUNT_SQL = {
    "post_count": "SELECT count(*) FROM posts p WHERE p.author_id = u.id",
    "follower_count": "SELECT count(*) FROM follows f WHERE f.followed_id = u.id",
    "following_count": "SELECT count(*) FROM follows f WHERE f.follower_id = u.id",
}


def recount_counters() -> dict[str, int]:
    """Recompute every stored counter from the rows; return how many users each fixed."""
    corrected = {}
    for column, count_sql in RECOUNT_SQL.items():
        result = db.session.execute(
            text(
                f"UPDATE users u SET {column} = ({count_sql}) "  # noqa: S608 (names from the dict above)
                f"WHERE u.{column} IS DISTINCT FROM ({count_sql})"
            )
        )
        corrected[column] = result.rowcount
    db.session.commit()
    return corrected
