"""Posts: write rules (ownership, counters, preconditions) and the read paths."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Collection
from datetime import datetime

from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import (
    BigInteger,
    Integer,
    Select,
    any_,
    bindparam,
    case,
    column,
    delete,
    false,
    func,
    or_,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import contains_eager

from app import cache, queue
from app.db import commit_statement, db, select_rows
from app.errors import QUERY_CANCELED, Forbidden, NotFound, ServiceUnavailable, account_gone, check_version
from app.mail import smtp
from app.models import Follow, Post, Role, User
from app.pagination import KeysetQuery, Page, comes_after, page_json
from app.posts.schemas import PostSchema
from app.users.service import (
    bump_counters,
    get_public,
    invalidate_author_posts,
    invalidate_author_posts_later,
    is_active,
)

log = logging.getLogger(__name__)

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
    for row in select_rows(_public_posts(), {"ids": ids}):
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
    """Posts by the active users someone follows (`reader=`), newest first, found one of
    two ways in one statement:

    - merged: each followed author's newest posts (after the cursor) are read from their
      own index, at most a page per author, then merged. The work grows with how many
      people the reader follows, not with how much anyone has written.
    - walked, for a reader who follows at least `walk_min` accounts: the newest posts of
      everyone (after the cursor) are read in order from the newest-first index, which
      carries each post's author, keeping those whose author the reader follows, until
      a page is found. It stops after `walk_scan` posts; a page not found by then is
      merged instead. For such a reader a page is usually a few hundred posts into the
      walk, where merging reads an index per followed account.

    Whether an author is active is one primary-key lookup per candidate post (a join let
    the planner scan all users). The reader's own account is the caller's to check
    (tokens.current_user_id).
    """

    def build(after):
        reader = bindparam("reader")
        author_active = select(User.is_active).where(User.id == Follow.followed_id).scalar_subquery()
        newest = select(Post.id, Post.created_at).where(Post.author_id == Follow.followed_id)
        if after is not None:
            newest = newest.where(comes_after([Post.created_at, Post.id], after))
        newest = (
            newest.order_by(Post.created_at.desc(), Post.id.desc()).limit(bindparam("page_limit")).lateral("newest")
        )
        merged = (
            select(newest.c.id, newest.c.created_at)
            .select_from(Follow)
            .join(newest, true())
            .where(Follow.follower_id == reader, author_active)
        )

        follows_many = select(User.following_count).where(User.id == reader).scalar_subquery() >= bindparam("walk_min")
        everyones = select(Post.id, Post.created_at, Post.author_id).where(follows_many)
        if after is not None:
            everyones = everyones.where(comes_after([Post.created_at, Post.id], after))
        everyones = everyones.order_by(Post.created_at.desc(), Post.id.desc()).limit(bindparam("walk_scan"))
        everyones = everyones.subquery("everyones")
        # scalar subqueries, not EXISTS or a join: PostgreSQL keeps them as a filter on the
        # ordered walk (which then stops at a page); in a CASE, so the author's row is read
        # only for a post whose author the reader follows, whatever the plan
        followed = (
            select(true())
            .where(Follow.follower_id == reader, Follow.followed_id == everyones.c.author_id)
            .scalar_subquery()
        )
        active = select(User.is_active).where(User.id == everyones.c.author_id).scalar_subquery()
        walked = (
            select(everyones.c.id, everyones.c.created_at)
            .where(case((followed, active), else_=false()))
            .order_by(everyones.c.created_at.desc(), everyones.c.id.desc())
            .limit(bindparam("page_limit"))
            .cte("walked")
        )
        found = select(func.count()).select_from(walked).scalar_subquery()
        feed = union_all(
            select(walked.c.id, walked.c.created_at).where(found == bindparam("page_limit")),
            merged.where(found < bindparam("page_limit")),
        ).subquery("feed")
        return select(feed.c.id, feed.c.created_at, feed.c.id.label("key_id"))

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
        return query.page(timeout_ms=config["SEARCH_STATEMENT_TIMEOUT_MS"], **params)
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


def feed(user_id: int, *, limit: int, cursor: str | None) -> bytes:
    """Posts by the active users `user_id` (an active account, checked by the caller)
    follows, newest first; the first page from the cache."""
    config = current_app.config
    params = {"reader": user_id, "walk_min": config["FEED_WALK_MIN_FOLLOWING"], "walk_scan": config["FEED_WALK_SCAN"]}
    query = _feed_query()
    if cursor is not None:
        return _page_json(query.page(limit=limit, cursor=cursor, **params))
    return _page_json(query.page_from_entry(_first_feed_page(user_id, query, params), limit))


def _first_feed_page(reader: int, query: KeysetQuery, params: dict) -> bytes:
    """The cache entry of `reader`'s first feed page, as cached unless stale. Writers
    under FEED_PULL_THRESHOLD followers drop their followers' pages; a pulled author's
    change moves its mark instead, so the page also holds the marks of the pulled
    authors the reader follows (noted before the query) and is stale once one moved."""
    key = cache.feed_key(reader)
    page = cache.feed_page(key)
    if page is not None:
        return page
    noted = cache.note_feed_fill(key)
    page = query.first_entry(params)
    if noted is not None:
        tombstone, pulled = noted
        followed = _followed_among(reader, list(pulled)) if pulled else []
        cache.put_feed_page(key, cache.feed_entry({a: pulled[a] for a in followed}, page), tombstone, followed)
    return page


_FOLLOWED_AMONG = select(Follow.followed_id).where(
    Follow.follower_id == bindparam("reader"), Follow.followed_id == any_(bindparam("authors", type_=ARRAY(BigInteger)))
)


def _followed_among(reader: int, authors: list[int]) -> list[int]:
    """Those of `authors` that `reader` follows (primary-key lookups, one per author)."""
    rows = db.session.connection().execute(_FOLLOWED_AMONG, {"reader": reader, "authors": authors}).scalars()
    return sorted(rows)


def posts_changed(author_id: int, *keys: str) -> None:
    """After a commit that changed `author_id`'s posts (or whether they are shown):
    posts_changed_now, or, when PostgreSQL cannot answer for the followers, `keys` and the
    author's entries dropped now and the rest queued to a worker. The change is
    committed: its request answers for it, so that a client's retry does not make it
    twice."""
    try:
        posts_changed_now(author_id, *keys)
    except (OperationalError, PoolTimeoutError) as error:
        log.warning("followers of user %s not read after a change to their posts (%s); queued", author_id, error)
        _posts_changed(author_id, [], *keys)  # the author's entries: no follower yet
        if not queue.send(queue.POSTS_CHANGED, [author_id, list(keys)]):
            log.error("followers of user %s not told of a change; their feed pages may be stale for the TTL", author_id)


def posts_changed_now(author_id: int, *keys: str) -> None:
    """Drop `keys`, the newest posts, the author's newest-posts entry and the first feed
    page of each follower, or move the author's mark when the followers pull
    (_posts_changed). Followers are read after the commit, so one who followed meanwhile
    either is in this list or read the feed after the change."""
    threshold = current_app.config["FEED_PULL_THRESHOLD"]
    rows = select_rows(_FOLLOWERS_TO_NOTIFY, {"author": author_id, "threshold": threshold})
    follower_count, followers = rows[0] if rows else (0, [])
    _posts_changed(author_id, None if _pulled(follower_count) else followers, *keys)


def _pulled(follower_count: int) -> bool:
    """Whether an author's followers pull the author's posts into their cached feed
    pages (the author's mark) rather than have each page dropped: with tens of thousands
    of followers, reading their ids and deleting as many keys would make every post of
    the author slow, and their drops would load Redis and a worker."""
    return follower_count >= current_app.config["FEED_PULL_THRESHOLD"]


# the author's follower count, and their followers while under the threshold: one round
# trip, after the commit of the change (posts_changed)
_FOLLOWERS_TO_NOTIFY = text("""
SELECT u.follower_count, coalesce(f.ids, '{}') AS followers FROM users u LEFT JOIN LATERAL (
    SELECT array_agg(follower_id) AS ids FROM follows
    WHERE followed_id = u.id AND u.follower_count < :threshold
) f ON true
WHERE u.id = :author
""").columns(column("follower_count", Integer), column("followers", ARRAY(BigInteger)))


def followers_of(author_id: int) -> list[int]:
    """Every follower of `author_id`: the first feed pages a worker's drop deletes."""
    return list(db.session.connection().execute(_FOLLOWERS, {"author": author_id}).scalars())


_FOLLOWERS = select(Follow.follower_id).where(Follow.followed_id == bindparam("author"))


def _posts_changed(author_id: int, followers: list[int] | None, *keys: str) -> None:
    """Drop `keys`, the author's and the newest posts' entries, and the first feed page of
    each of `followers`; None: the author is pulled, so move its mark instead. An author
    who has just become pulled has pages cached without its mark: a worker drops every
    follower's page once (drop_follower_feeds), and so it does when Redis refused the mark."""
    keys = (*keys, cache.recent_posts_key(author_id), cache.newest_posts_key())
    if followers is not None:
        cache.invalidate(*keys, *(cache.feed_key(follower) for follower in followers))
    elif cache.pulled_author_changed(author_id, keys) is not False:
        _drop_follower_feeds_later(author_id)


FEED_DROP_BATCH = 1000


def _drop_follower_feeds_later(author_id: int) -> None:
    """Queue drop_follower_feeds; when the broker cannot take it, drop them here."""
    if not queue.send(queue.DROP_FOLLOWER_FEEDS, [author_id]):
        with contextlib.suppress(RedisError):  # Redis down too: the cache TTL is the bound
            drop_follower_feeds(author_id)


def drop_follower_feeds(author_id: int) -> int:
    """Drop the first feed page of every follower of `author_id` (the worker's half of an
    author's becoming pulled), in batches; how many followers. The followers are read
    after the change committed, so whoever followed before it is among them."""
    followers = followers_of(author_id)
    db.session.rollback()  # a read: no transaction held while Redis works
    for start in range(0, len(followers), FEED_DROP_BATCH):
        cache.invalidate(*(cache.feed_key(follower) for follower in followers[start : start + FEED_DROP_BATCH]))
    return len(followers)


def author_visibility_changed(author_id: int) -> None:
    """After a commit that shows or hides an account ((de)activated, deleted): drop its
    profile, the users list, every list and feed page its posts were or would be on, and
    its cached posts (now, and by a worker again soon)."""
    posts_changed(author_id, cache.profile_key(author_id), cache.users_key())
    with contextlib.suppress(RedisError):
        invalidate_author_posts(author_id)
    invalidate_author_posts_later(author_id)


# the post and the author's counter in one statement, which is also the account check:
# nothing is written unless the author is an active account (with a verified email when
# posting needs one). It reads the followers to notify too, in its snapshot, which is
# taken before it locks the author's row: they are all there are when the row's
# follows_version (bumped by every follow, which locks the same row) is still the one
# the snapshot saw, as no follow commits while the row is locked; NULL otherwise (a
# follow came in between: they are read after the commit), and for a pulled author.
_CREATE = text("""
WITH seen AS (
    SELECT follows_version FROM users WHERE id = :author
), author AS (
    UPDATE users SET post_count = post_count + 1
    WHERE id = :author AND is_active AND (email_verified OR NOT :must_verify)
    RETURNING id, username, display_name, follower_count, follows_version
), post AS (
    INSERT INTO posts (author_id, title, body)
    SELECT id, :title, :body FROM author
    RETURNING id, title, body, version, created_at, updated_at
)
SELECT post.*, author.id AS author_id, author.username, author.display_name, author.follower_count,
    CASE WHEN author.follows_version = seen.follows_version AND author.follower_count < :threshold
        THEN coalesce((SELECT array_agg(follower_id) FROM follows WHERE followed_id = :author), '{}')
    END AS followers
FROM post, author, seen
""")

UNVERIFIED_EMAIL = (
    "Verify your email address before posting: follow the link in the mail we sent, "
    "or ask for a new one with POST /api/v1/auth/verify-email/resend."
)


def posting_needs_verified_email() -> bool:
    """REQUIRE_VERIFIED_EMAIL_TO_POST, while mail is on (else no mail could verify one)."""
    return current_app.config["REQUIRE_VERIFIED_EMAIL_TO_POST"] and smtp.enabled()


def create_post(author_id: int, title: str, body: str) -> dict | None:
    """The new post as stored (server defaults included) with its author's summary; None
    when `author_id` is not an active account, 403 when posting needs a verified email
    and the author's is not (nothing is written either way).

    One statement writes the post, counts it, returns what the 201 shows and the
    followers to notify, committed in its round trip; when a follow came in while it
    waited for the author's row, the followers are read after it (posts_changed)."""
    must_verify = posting_needs_verified_email()
    threshold = current_app.config["FEED_PULL_THRESHOLD"]
    params = {"author": author_id, "title": title, "body": body, "must_verify": must_verify, "threshold": threshold}
    row = commit_statement(_CREATE, params)
    if row is None:  # nothing was written
        if must_verify and is_active(author_id):
            raise Forbidden(UNVERIFIED_EMAIL)
        return None
    post = row._asdict()
    follower_count, followers = post.pop("follower_count"), post.pop("followers")
    if followers is None and not _pulled(follower_count):  # a follow came in meanwhile
        posts_changed(author_id, cache.profile_key(author_id))
    else:  # None for a pulled author: its mark moves
        _posts_changed(author_id, followers, cache.profile_key(author_id))
    return _with_author_summary(post)


_AUTHOR_COLUMNS = (("id", "author_id"), ("username", "username"), ("display_name", "display_name"))


def _post_dict(row) -> dict:
    return _with_author_summary(row._asdict())


def _with_author_summary(post: dict) -> dict:
    post["author"] = {name: post.pop(column) for name, column in _AUTHOR_COLUMNS}
    return post


def _editable(post_id: int, actor: User) -> Post:
    """The post, locked, if `actor` may change it: its author or an admin."""
    post = get_post(post_id, for_update=True)
    if post.author_id != actor.id and not actor.is_admin:
        raise Forbidden("Only the author or an admin may change this post.")
    return post


def _actor(actor_id: int) -> User:
    actor = db.session.get(User, actor_id)
    if actor is None or not actor.is_active:
        raise account_gone()
    return actor


_IS_ADMIN = select(User.id).where(User.id == bindparam("actor"), User.role == Role.ADMIN.value, User.is_active).exists()


def update_post(post_id: int, actor_id: int, changes: dict, expected_versions: Collection[int] | None) -> dict:
    """Apply `changes` if `actor_id` is the author or an admin, and the post's version is
    one expected (None: any); the post as stored, with its author's summary.

    One UPDATE does it all when it may (READ COMMITTED checks its conditions again on
    the row it waited for), committed in its round trip; only when it changed
    nothing is the post read, locked, to say why (404, 403, 412), or changed if it may be
    after all."""
    stmt = _update_post_stmt(tuple(sorted(changes)), expected_versions is not None)
    params = {"post": post_id, "actor": actor_id, "expected": list(expected_versions or ()), **changes}
    row = commit_statement(stmt, params)
    if row is None:  # nothing was written
        post = _editable(post_id, _actor(actor_id))
        check_version(expected_versions, post.version)
        row = commit_statement(stmt, params)
        if row is None:  # pragma: no cover  (the row is locked and was just checked)
            raise NotFound(f"No post with id {post_id}.")
    cache.invalidate(cache.post_key(post_id), cache.recent_posts_key(row.author_id))
    return _post_dict(row)


_POST_COLUMNS = (Post.id, Post.title, Post.body, Post.version, Post.created_at, Post.updated_at)


@functools.cache
def _update_post_stmt(fields: tuple[str, ...], versioned: bool):
    """The edit's UPDATE for these fields, built once: parameters `post`, `actor`,
    `expected` (the versions, when `versioned`) and one per field."""
    conditions = [Post.id == bindparam("post"), User.id == Post.author_id]
    if versioned:
        conditions.append(Post.version == any_(bindparam("expected", type_=ARRAY(BigInteger))))
    return (
        update(Post)
        .where(*conditions, or_(Post.author_id == bindparam("actor"), _IS_ADMIN))
        .values(**{field: bindparam(field) for field in fields}, version=Post.version + 1, updated_at=func.now())
        .returning(*_POST_COLUMNS, User.id.label("author_id"), User.username, User.display_name)
    )


def delete_post(post_id: int, actor: User, expected_versions: Collection[int] | None) -> None:
    post = _editable(post_id, actor)
    check_version(expected_versions, post.version)
    db.session.execute(delete(Post).where(Post.id == post.id))
    bump_counters(post.author_id, post_count=-1)
    db.session.commit()
    posts_changed(post.author_id, cache.post_key(post_id), cache.profile_key(post.author_id))
