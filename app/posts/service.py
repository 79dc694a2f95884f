"""Posts: write rules (ownership, counters, preconditions) and the read paths."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Collection
from datetime import datetime

from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import BigInteger, Select, any_, bindparam, delete, func, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import contains_eager

from app import cache
from app.db import db, statement_timeout
from app.errors import QUERY_CANCELED, Forbidden, NotFound, ServiceUnavailable, check_version
from app.mail import smtp
from app.models import Follow, Post, User
from app.pagination import KeysetQuery, Page, comes_after, page_json
from app.posts.schemas import PostSchema
from app.users.service import (
    bump_counters,
    get_public,
    invalidate_author_posts,
    invalidate_author_posts_later,
    is_active,
)

KEY_KINDS = [datetime, int]


def _with_author():
    return select(Post).join(Post.author).options(contains_eager(Post.author))


_POST_SCHEMA = PostSchema()


@functools.cache
def _public_posts() -> Select:
    """Posts of active authors by id (`ids=`, one array: one prepared statement for any
    number) with the author's summary, as plain columns: the reads dump these (no ORM
    objects) and cache the JSON."""
    return (
        select(Post.id, Post.title, Post.body, Post.version, Post.created_at, Post.updated_at)
        .add_columns(User.id.label("author_id"), User.username, User.display_name)
        .join(User, User.id == Post.author_id)
        .where(Post.id == any_(bindparam("ids", type_=ARRAY(BigInteger))), User.is_active)
    )


def _load_public(ids: list[int]) -> dict[int, tuple[int, bytes]]:
    """(version, JSON) of each of these posts still shown, loaded in one query and cached."""
    dumps = current_app.json.dumps
    found = {}
    for row in db.session.connection().execute(_public_posts(), {"ids": ids}):
        post = row._asdict()
        post["author"] = {"id": row.author_id, "username": row.username, "display_name": row.display_name}
        found[row.id] = (row.version, dumps(_POST_SCHEMA.dump(post)).encode())
    cache.put_many([(cache.post_key(i), _cache_entry(*entry)) for i, entry in found.items()])
    return found


def _cache_entry(version: int, payload: bytes) -> bytes:
    """A cached post: its version (for the ETag) and its JSON, on one line each."""
    return b"%d\n%s" % (version, payload)


def _from_cache_entry(entry: bytes) -> tuple[int, bytes]:
    version, payload = entry.split(b"\n", 1)
    return int(version), payload


@functools.cache
def _newest_posts(*, active_authors: bool, by_author: bool = False, search: bool = False) -> KeysetQuery:
    """Ids of posts, newest first, read from the indexes: optionally only by active
    authors, by one author (`author=`), matching a web-style search (`q=`)."""

    def build(_after):
        stmt = select(Post.id, Post.created_at, Post.id.label("key_id"))
        if active_authors:
            stmt = stmt.join(User, User.id == Post.author_id).where(User.is_active)
        if by_author:
            stmt = stmt.where(Post.author_id == bindparam("author"))
        if search:
            stmt = stmt.where(Post.search.op("@@")(func.websearch_to_tsquery("english", bindparam("q"))))
        return stmt

    return KeysetQuery(build, KEY_KINDS)


@functools.cache
def _feed_query() -> KeysetQuery:
    """Posts by the active users someone follows (`reader=`), newest first.

    Each followed author's newest posts (after the cursor) are read from their own
    index, at most a page per author, then merged: the work grows with how many people
    the reader follows, not with how much they have written. Whether an author is active
    is one primary-key lookup per followed user (a join let the planner scan all users).
    It finds nothing unless the reader's own account is active (one more lookup), which
    spares a later page a round trip of its own for that check (the cached first page
    checks first, on its own).
    """

    def build(after):
        newest = select(Post.id, Post.created_at).where(Post.author_id == Follow.followed_id)
        if after is not None:
            newest = newest.where(comes_after([Post.created_at, Post.id], after))
        newest = (
            newest.order_by(Post.created_at.desc(), Post.id.desc()).limit(bindparam("page_limit")).lateral("newest")
        )
        author_active = select(User.is_active).where(User.id == Follow.followed_id).scalar_subquery()
        reader_active = select(User.is_active).where(User.id == bindparam("reader")).scalar_subquery()
        return (
            select(newest.c.id, newest.c.created_at, newest.c.id.label("key_id"))
            .select_from(Follow)
            .join(newest, true())
            .where(Follow.follower_id == bindparam("reader"), author_active, reader_active)
        )

    return KeysetQuery(build, KEY_KINDS)


def _page_json(page: Page) -> bytes:
    """A page of posts as JSON, each post from the cache when it is there.

    The page was found by ids alone; cached posts are fetched in one round trip and the
    rest loaded in one query, dumped and cached. The JSON is the same as PostSchema's
    (it is PostSchema's, cached): a list page costs one index scan when the posts are warm.
    """
    cached = cache.get_many([cache.post_key(post_id) for post_id in page.items])
    missing = [post_id for post_id, entry in zip(page.items, cached, strict=True) if entry is None]
    fresh = _load_public(missing) if missing else {}
    items = [
        _from_cache_entry(entry)[1] if entry is not None else fresh[post_id][1]
        for post_id, entry in zip(page.items, cached, strict=True)
        if entry is not None or post_id in fresh  # one deleted (or hidden) between the two queries is left out
    ]
    return page_json(items, page.next_cursor)


def get_post(post_id: int, *, for_update: bool = False) -> Post:
    stmt = _with_author().where(Post.id == post_id)
    if for_update:
        stmt = stmt.with_for_update(of=Post).execution_options(populate_existing=True)
    post = db.session.scalars(stmt).first()
    if post is None:
        raise NotFound(f"No post with id {post_id}.")
    return post


def public_post_json(post_id: int) -> tuple[int, bytes]:
    """A post of an active author with its author summary, as (version, JSON); from the
    cache when it is there."""
    cached = cache.get(cache.post_key(post_id))
    if cached is not None:
        return _from_cache_entry(cached)
    found = _load_public([post_id]).get(post_id)
    if found is None:
        raise NotFound(f"No post with id {post_id}.")
    return found


def list_posts(*, limit: int, cursor: str | None, author: int | None = None, q: str | None = None) -> bytes:
    """Newest first; optionally one author's, optionally matching a web-style search."""
    query = _newest_posts(active_authors=True, by_author=author is not None, search=bool(q))
    if q:
        return _page_json(_search(query, limit=limit, cursor=cursor, author=author, q=q))
    everyones = author is None  # the list everyone reads: its first page is cached
    cached_as = cache.newest_posts_key() if everyones else None
    return _page_json(query.page(limit=limit, cursor=cursor, cached_as=cached_as, author=author))


def _search(query: KeysetQuery, **params) -> Page:
    """A page of a full-text search, stopped after SEARCH_STATEMENT_TIMEOUT_MS: its cost
    grows with the table, and anyone may send one."""
    config = current_app.config
    try:
        with statement_timeout(config["SEARCH_STATEMENT_TIMEOUT_MS"]):
            return query.page(**params)
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != QUERY_CANCELED:
            raise
        raise ServiceUnavailable(
            "The search took too long and was stopped. Try more specific words, or retry later.",
            headers={"Retry-After": str(config["RETRY_AFTER_SECONDS"])},
        ) from None


def posts_of(user_id: int, *, limit: int, cursor: str | None) -> bytes:
    get_public(user_id)
    return _page_json(
        _newest_posts(active_authors=False, by_author=True).page(limit=limit, cursor=cursor, author=user_id)
    )


def feed(user_id: int, *, limit: int, cursor: str | None) -> bytes | None:
    """Posts by the active users `user_id` follows, newest first; None when `user_id` is
    not an active account.

    The first page comes from the cache, after the account is checked in PostgreSQL
    (every request: a token outlives a flag changed by hand). Later pages fold that
    check into their query, and ask on their own only when the page is empty.
    """
    if cursor is None:
        if not is_active(user_id):
            return None
        first = _feed_query().page(limit=limit, cursor=None, cached_as=cache.feed_key(user_id), reader=user_id)
        return _page_json(first)
    page = _feed_query().page(limit=limit, cursor=cursor, reader=user_id)
    if not page.items and not is_active(user_id):
        return None
    return _page_json(page)


def posts_changed(author_id: int, *keys: str) -> None:
    """After a commit that changed `author_id`'s posts (or whether they are shown): drop
    `keys`, the newest posts, the author's newest-posts entry and the first feed page of
    each follower. Followers are read after the commit, so one who followed meanwhile
    either is in this list or read the feed after the change."""
    followers = db.session.scalars(select(Follow.follower_id).where(Follow.followed_id == author_id)).all()
    cache.invalidate(
        *keys,
        cache.recent_posts_key(author_id),
        cache.newest_posts_key(),
        *(cache.feed_key(follower) for follower in followers),
    )


def author_visibility_changed(author_id: int) -> None:
    """After a commit that shows or hides an account ((de)activated, deleted): drop its
    profile, the users list, every list and feed page its posts were or would be on, and
    its cached posts (now, and by a worker again soon)."""
    posts_changed(author_id, cache.profile_key(author_id), cache.users_key())
    with contextlib.suppress(RedisError):
        invalidate_author_posts(author_id)
    invalidate_author_posts_later(author_id)


_CREATED_COLUMNS = ("id", "title", "body", "version", "created_at", "updated_at")


def require_verified_email(author: User) -> None:
    """403 when posting needs a verified email (REQUIRE_VERIFIED_EMAIL_TO_POST, while mail
    is on) and the author's is not."""
    cfg = current_app.config
    if cfg["REQUIRE_VERIFIED_EMAIL_TO_POST"] and smtp.enabled() and not author.email_verified:
        raise Forbidden(
            "Verify your email address before posting: follow the link in the mail we sent, "
            "or ask for a new one with POST /api/v1/auth/verify-email/resend."
        )


def create_post(author: User, title: str, body: str) -> dict:
    """The new post as stored: its columns as the INSERT returned them (server defaults
    included), taken before the commit expires them, with `author`'s summary: reading it
    back after the commit cost two queries."""
    require_verified_email(author)
    post = Post(author_id=author.id, title=title, body=body)
    db.session.add(post)
    db.session.flush()
    created = {column: getattr(post, column) for column in _CREATED_COLUMNS}
    created["author"] = {"id": author.id, "username": author.username, "display_name": author.display_name}
    bump_counters(author.id, post_count=1)
    db.session.commit()
    posts_changed(author.id, cache.profile_key(author.id))
    return created


def _editable(post_id: int, actor: User) -> Post:
    """The post, locked, if `actor` may change it: its author or an admin."""
    post = get_post(post_id, for_update=True)
    if post.author_id != actor.id and not actor.is_admin:
        raise Forbidden("Only the author or an admin may change this post.")
    return post


def update_post(post_id: int, actor: User, changes: dict, expected_versions: Collection[int] | None) -> Post:
    """Apply `changes` under a row lock; 412 unless the post's version is one expected (None: any)."""
    post = _editable(post_id, actor)
    check_version(expected_versions, post.version)
    for field, value in changes.items():
        setattr(post, field, value)
    post.version = Post.version + 1
    post.updated_at = func.now()
    db.session.commit()
    cache.invalidate(cache.post_key(post_id), cache.recent_posts_key(post.author_id))
    return get_post(post_id)


def delete_post(post_id: int, actor: User, expected_versions: Collection[int] | None) -> None:
    post = _editable(post_id, actor)
    check_version(expected_versions, post.version)
    db.session.execute(delete(Post).where(Post.id == post.id))
    bump_counters(post.author_id, post_count=-1)
    db.session.commit()
    posts_changed(post.author_id, cache.post_key(post_id), cache.profile_key(post.author_id))
