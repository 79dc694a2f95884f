"""Profiles, the follow graph and the counters on users."""

from __future__ import annotations

import functools
from collections.abc import Collection
from datetime import datetime

from flask import current_app
from sqlalchemy import BigInteger, any_, bindparam, cast, func, or_, select, text, true, update
from sqlalchemy.dialects.postgresql import ARRAY

from app import cache, queue
from app.db import commit_statement, db, select_rows
from app.errors import NotFound, ValidationFailed, check_version
from app.jobs import service as jobs
from app.models import Follow, Job, JobKind, Post, User
from app.pagination import KeysetQuery, Page, keyset_page, page_json
from app.users.schemas import PostBriefSchema, PublicUserSchema

RECENT_POSTS = 5
_PUBLIC_USER = PublicUserSchema()
_POST_BRIEFS = PostBriefSchema(many=True)


@functools.cache
def _is_active_stmt():
    return select(User.is_active).where(User.id == bindparam("user_id"))


def is_active(user_id: int) -> bool:
    """Whether the account exists and is active: one column by primary key (prepared)."""
    return bool(db.session.connection().execute(_is_active_stmt(), {"user_id": user_id}).scalar())


def get_public(user_id: int) -> User:
    """An active user, else 404."""
    user = db.session.get(User, user_id)
    if user is None or not user.is_active:
        raise NotFound(f"No user with id {user_id}.")
    return user


def _profile_json(user) -> bytes:
    return current_app.json.dumps(_PUBLIC_USER.dump(user)).encode()


@functools.cache
def _public_profile_stmt():
    """An active user's public columns (the schema's fields) as a plain row: a miss
    needs no ORM object."""
    columns = [User.__table__.c[name] for name in _PUBLIC_USER.fields]
    return select(*columns).where(User.id == bindparam("user_id"), User.is_active)


def public_profile_json(user_id: int) -> bytes:
    """The public profile as JSON, from the cache when it is there."""
    key = cache.profile_key(user_id)
    cached = cache.get(key)
    if cached is not None:
        return cached
    rows = select_rows(_public_profile_stmt(), {"user_id": user_id})
    if not rows:
        raise NotFound(f"No user with id {user_id}.")
    payload = _profile_json(rows[0])
    cache.put(key, payload)
    return payload


def escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@functools.cache
def _active_users(*, search: bool) -> KeysetQuery:
    """Ids of active users in id order; with `search`, those whose username or display
    name starts with `prefix=` (a LIKE pattern, case-folded)."""

    def build(_after):
        stmt = select(User.id, User.id.label("key_id")).where(User.is_active)
        if search:
            prefix = bindparam("prefix")
            stmt = stmt.where(or_(func.lower(User.username).like(prefix), func.lower(User.display_name).like(prefix)))
        return stmt

    return KeysetQuery(build, [int], descending=False)


def list_users_json(*, limit: int, cursor: str | None, q: str | None = None, include_posts: bool = False) -> bytes:
    """A page of active users by id as JSON; `q` matches a prefix of username or display
    name; `include_posts` adds each one's newest posts.

    Like the lists of posts: the page is found by ids, then each profile (and list of
    newest posts) comes from the cache in one round trip; what is missing is loaded in
    one query per kind, dumped and cached. Warm, the first page (no `q`) needs no query
    and a later one is one index scan.
    """
    prefix = escape_like(q.lower()) + "%" if q else None
    cached_as = None if q else cache.users_key()  # the first page everyone reads is cached
    page = _active_users(search=bool(q)).page(limit=limit, cursor=cursor, cached_as=cached_as, prefix=prefix)
    ids = page.items
    keys = [cache.profile_key(i) for i in ids] + ([cache.recent_posts_key(i) for i in ids] if include_posts else [])
    cached = cache.get_many(keys)
    profiles = dict(zip(ids, cached[: len(ids)], strict=True))
    if missing := [i for i in ids if profiles[i] is None]:
        loaded = {
            user.id: _profile_json(user)
            for user in db.session.scalars(select(User).where(User.id.in_(missing), User.is_active))
        }
        cache.put_many([(cache.profile_key(i), payload) for i, payload in loaded.items()])
        profiles.update(loaded)
    if include_posts:
        newest = dict(zip(ids, cached[len(ids) :], strict=True))
        if missing := [i for i in ids if newest[i] is None]:
            loaded = recent_posts_json(missing)
            cache.put_many([(cache.recent_posts_key(i), payload) for i, payload in loaded.items()])
            newest.update(loaded)
        # the profile is a JSON object: the list goes in before its closing brace
        items = [profiles[i][:-1] + b',"posts":' + newest[i] + b"}" for i in ids if profiles[i] is not None]
    else:
        items = [profiles[i] for i in ids if profiles[i] is not None]  # None: deactivated meanwhile
    return page_json(items, page.next_cursor)


def recent_posts_json(user_ids: list[int], per_user: int = RECENT_POSTS) -> dict[int, bytes]:
    """The newest posts of each user (id, title, created_at) as a JSON list, in one query
    for all of them.

    A LATERAL join reads at most `per_user` index entries per user, however many posts
    each has (a window over all their posts grew with the busiest author).
    """
    by_author: dict[int, list] = {user_id: [] for user_id in user_ids}
    if by_author:
        authors = func.unnest(cast(list(by_author), ARRAY(BigInteger))).table_valued("id").render_derived()
        newest = (
            select(Post.id, Post.author_id, Post.title, Post.created_at)
            .where(Post.author_id == authors.c.id)
            .order_by(Post.created_at.desc(), Post.id.desc())
            .limit(per_user)
            .lateral()
        )
        rows = select(newest).select_from(authors).join(newest, true())
        for row in db.session.execute(rows.order_by(newest.c.created_at.desc(), newest.c.id.desc())):
            by_author[row.author_id].append(row)
    dumps = current_app.json.dumps
    return {user_id: dumps(_POST_BRIEFS.dump(rows)).encode() for user_id, rows in by_author.items()}


def update_profile(user_id: int, changes: dict, expected_versions: Collection[int] | None) -> dict | None:
    """Apply `changes` to an active account's profile; 412 unless its version is one
    expected (None: any). The profile as stored; None when the account is gone.

    One UPDATE, which locks the row first (the sub-select) to know the name it had, and
    checks the version on the row it locked; committed in its round trip."""
    stmt = _update_profile_stmt(tuple(sorted(changes)), expected_versions is not None)
    params = {"user": user_id, "expected": list(expected_versions or ()), **changes}
    row = commit_statement(stmt, params)
    if row is None:  # nothing was written; why: gone, or another version
        user = db.session.get(User, user_id, populate_existing=True)
        active, version = (user.is_active, user.version) if user is not None else (False, None)
        db.session.rollback()
        if not active:
            return None
        check_version(expected_versions, version)
        raise RuntimeError("the profile update matched no row for no reason")  # pragma: no cover
    cache.invalidate(cache.profile_key(user_id))
    profile = row._asdict()
    if profile.pop("display_name_before") != profile["display_name"]:
        invalidate_author_posts_later(user_id)
    return profile


@functools.cache
def _update_profile_stmt(fields: tuple[str, ...], versioned: bool):
    """The profile's UPDATE for these fields, built once: parameters `user`, `expected`
    (the versions, when `versioned`) and one per field."""
    before = select(User.id, User.display_name).where(User.id == bindparam("user")).with_for_update()
    before = before.subquery("before")
    conditions = [User.id == before.c.id, User.is_active]
    if versioned:
        conditions.append(User.version == any_(bindparam("expected", type_=ARRAY(BigInteger))))
    return (
        update(User)
        .where(*conditions)
        .values(**{field: bindparam(field) for field in fields}, version=User.version + 1, updated_at=func.now())
        .returning(*User.__table__.c, before.c.display_name.label("display_name_before"))
    )


def invalidate_author_posts_later(user_id: int) -> None:
    """Cached posts embed the author's name: a worker drops them all, now and once
    more a second later (a reader that loaded a post before the change may have put
    it back in between)."""
    queue.send(queue.INVALIDATE_AUTHOR_POSTS, [user_id])
    queue.send(queue.INVALIDATE_AUTHOR_POSTS, [user_id], countdown=1)


def invalidate_author_posts(user_id: int) -> int:
    """Drop every cached post of a user (the worker's half); returns how many posts."""
    ids = db.session.connection().execute(select(Post.id).where(Post.author_id == user_id)).scalars().all()
    for start in range(0, len(ids), 1000):
        cache.delete_cached([cache.post_key(post_id) for post_id in ids[start : start + 1000]])
    return len(ids)


def bump_counters(user_id: int, **deltas: int) -> None:
    """Add `deltas` to a user's stored counters in the current transaction."""
    db.session.execute(
        update(User)
        .where(User.id == user_id)
        .values({name: getattr(User, name) + delta for name, delta in deltas.items()})
    )


# One statement per follow or unfollow: whether the two accounts are active, the row,
# and both counters (and, for a follow, the followed account's follows_version). The two
# users' rows are locked in id order (ORDER BY ... FOR NO KEY UPDATE), so two users
# following each other never deadlock. {change} is the INSERT or the DELETE, returning a
# row when it changed something.
_FOLLOW_PAIR = """
WITH follower AS (
    SELECT id FROM users WHERE id = :follower AND is_active
), followed AS (
    SELECT id FROM users WHERE id = :followed AND is_active
), changed AS (
    {change}
), locked AS (
    SELECT id FROM users
    WHERE id IN (:follower, :followed) AND EXISTS (SELECT FROM changed)
    ORDER BY id FOR NO KEY UPDATE
), counted AS (
    UPDATE users SET
        following_count = following_count + CASE WHEN users.id = :follower THEN :delta ELSE 0 END,
        follower_count = follower_count + CASE WHEN users.id = :followed THEN :delta ELSE 0 END,
        follows_version = follows_version + CASE WHEN users.id = :followed AND :delta > 0 THEN 1 ELSE 0 END
    FROM locked WHERE users.id = locked.id
    RETURNING users.id
)
SELECT EXISTS (SELECT FROM follower) AS follower_ok, EXISTS (SELECT FROM followed) AS followed_ok,
       (SELECT count(*) FROM counted) > 0 AS changed
"""
_FOLLOW = text(
    _FOLLOW_PAIR.format(
        change="INSERT INTO follows (follower_id, followed_id) SELECT follower.id, followed.id FROM follower, followed"
        " ON CONFLICT DO NOTHING RETURNING followed_id"
    )
)
_UNFOLLOW = text(
    _FOLLOW_PAIR.format(
        change="DELETE FROM follows USING follower, followed"
        " WHERE follower_id = follower.id AND followed_id = followed.id RETURNING followed_id"
    )
)


def follow(follower_id: int, followed_id: int) -> bool:
    """Idempotent: following twice is the same as once. False when the follower's own
    account is gone; 404 when the one to follow is not an active user."""
    if follower_id == followed_id:
        raise ValidationFailed("You cannot follow yourself.", errors={"user_id": ["Cannot follow yourself."]})
    return _change_follow(_FOLLOW, follower_id, followed_id, +1)


def unfollow(follower_id: int, followed_id: int) -> bool:
    """Idempotent: unfollowing someone not followed is a no-op. False when the
    follower's own account is gone; 404 when the other is not an active user."""
    if follower_id == followed_id:
        raise ValidationFailed("You cannot unfollow yourself.", errors={"user_id": ["Cannot unfollow yourself."]})
    return _change_follow(_UNFOLLOW, follower_id, followed_id, -1)


def _change_follow(stmt, follower_id: int, followed_id: int, delta: int) -> bool:
    params = {"follower": follower_id, "followed": followed_id, "delta": delta}
    follower_ok, followed_ok, changed = commit_statement(stmt, params)
    if not (follower_ok and followed_ok):  # nothing was written
        if not follower_ok:
            return False
        raise NotFound(f"No user with id {followed_id}.")
    if changed:
        cache.invalidate(cache.profile_key(follower_id), cache.profile_key(followed_id), cache.feed_key(follower_id))
    return True


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


COUNTERS = ("post_count", "follower_count", "following_count")

# One batch of users: the counts from the rows, written where they differ; RETURNING
# says which counters were wrong.
_RECOUNT_BATCH = text("""
WITH fresh AS (
    SELECT u.id, u.post_count AS old_posts, u.follower_count AS old_followers,
           u.following_count AS old_following,
           (SELECT count(*) FROM posts p WHERE p.author_id = u.id) AS posts,
           (SELECT count(*) FROM follows f WHERE f.followed_id = u.id) AS followers,
           (SELECT count(*) FROM follows f WHERE f.follower_id = u.id) AS following
    FROM users u WHERE u.id >= :low AND u.id < :high
)
UPDATE users u
SET post_count = fresh.posts, follower_count = fresh.followers, following_count = fresh.following
FROM fresh
WHERE u.id = fresh.id
  AND (fresh.old_posts, fresh.old_followers, fresh.old_following)
      IS DISTINCT FROM (fresh.posts, fresh.followers, fresh.following)
RETURNING u.id, fresh.old_posts <> fresh.posts, fresh.old_followers <> fresh.followers,
          fresh.old_following <> fresh.following
""")


def recount_counters(*, batch_size: int = 1000, progress=None) -> dict:
    """Recompute every stored counter from the rows, a batch of users per transaction.

    Returns how many users had each counter corrected, and the first corrected ids;
    `progress(done, total)` is called after each batch.
    """
    low, high = db.session.execute(select(func.min(User.id), func.max(User.id))).one()
    total = db.session.scalar(select(func.count()).select_from(User))
    corrected = dict.fromkeys(COUNTERS, 0)
    fixed_ids: list[int] = []
    done = 0
    for start in range(low or 0, (high or -1) + 1, batch_size):
        rows = db.session.execute(_RECOUNT_BATCH, {"low": start, "high": start + batch_size}).all()
        done += db.session.scalar(
            select(func.count()).select_from(User).where(User.id >= start, User.id < start + batch_size)
        )
        db.session.commit()
        for user_id, *flags in rows:
            for name, flag in zip(COUNTERS, flags, strict=True):
                corrected[name] += int(flag)
            fixed_ids.append(user_id)
        cache.invalidate(*(cache.profile_key(user_id) for user_id, *_ in rows))
        if progress:
            progress(done, total)
    return {**corrected, "users_checked": done, "users_corrected": len(fixed_ids), "corrected_ids": fixed_ids[:100]}


def start_recount_job(owner_id: int | None = None, *, queue: bool = True) -> Job:
    """Record a recount job: an admin's, or the system's (no owner: the nightly one, the
    CLI's). Queued for a worker, unless `queue` is false (the CLI runs it itself)."""
    return jobs.create(JobKind.RECOUNT, owner_id, queue=queue)
