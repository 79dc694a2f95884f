"""Posts: write rules (ownership, counters, preconditions) and the read paths."""

from __future__ import annotations

import json
from datetime import datetime

from flask import current_app
from sqlalchemy import delete, func, select
from sqlalchemy.orm import contains_eager
from werkzeug.datastructures import ETags

from app import cache
from app.api import check_if_match
from app.errors import Forbidden, NotFound
from app.extensions import db
from app.models import Follow, Post, User
from app.pagination import keyset_page
from app.posts.schemas import PostSchema
from app.users.service import bump_counters, get_public

KEY = [Post.created_at, Post.id]
KEY_KINDS = [datetime, int]


def _with_author():
    return select(Post).join(Post.author).options(contains_eager(Post.author))


def _post_json(post: Post) -> bytes:
    return current_app.json.dumps(PostSchema().dump(post)).encode()


def _cache_entry(post: Post, payload: bytes) -> bytes:
    """A cached post: its version (for the ETag) and its JSON, on one line each."""
    return b"%d\n%s" % (post.version, payload)


def _from_cache_entry(entry: bytes) -> tuple[int, bytes]:
    version, payload = entry.split(b"\n", 1)
    return int(version), payload


def _ids():
    """Ids of posts by active authors, with the sort key (read from the indexes)."""
    return select(Post.id, Post.created_at, Post.id.label("key_id")).join(User, User.id == Post.author_id)


def _page_json(stmt, limit: int, cursor: str | None) -> bytes:
    """A page of posts as JSON, each post from the cache when it is there.

    The page is found by ids alone; cached posts are fetched in one round trip and the
    rest loaded in one query, dumped and cached. The JSON is the same as PostSchema's
    (it is PostSchema's, cached): a list page costs one index scan when the posts are warm.
    """
    page = keyset_page(stmt, KEY, KEY_KINDS, limit=limit, cursor=cursor)
    cached = cache.get_many([cache.post_key(post_id) for post_id in page.items])
    missing = [post_id for post_id, entry in zip(page.items, cached, strict=True) if entry is None]
    fresh: dict[int, bytes] = {}
    if missing:
        entries = []
        for post in db.session.scalars(_with_author().where(Post.id.in_(missing))):
            fresh[post.id] = _post_json(post)
            entries.append((cache.post_key(post.id), _cache_entry(post, fresh[post.id])))
        cache.put_many(entries)
    items = [
        _from_cache_entry(entry)[1] if entry is not None else fresh[post_id]
        for post_id, entry in zip(page.items, cached, strict=True)
        if entry is not None or post_id in fresh  # one deleted between the two queries is left out
    ]
    return b'{"items":[%s],"next_cursor":%s}' % (b",".join(items), json.dumps(page.next_cursor).encode())


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
    key = cache.post_key(post_id)
    cached = cache.get(key)
    if cached is not None:
        return _from_cache_entry(cached)
    post = get_post(post_id)
    if not post.author.is_active:
        raise NotFound(f"No post with id {post_id}.")
    payload = _post_json(post)
    cache.put(key, _cache_entry(post, payload))
    return post.version, payload


def list_posts(*, limit: int, cursor: str | None, author: int | None = None, q: str | None = None) -> bytes:
    """Newest first; optionally one author's, optionally matching a web-style search."""
    stmt = _ids().where(User.is_active)
    if author is not None:
        stmt = stmt.where(Post.author_id == author)
    if q:
        stmt = stmt.where(Post.search.op("@@")(func.websearch_to_tsquery("english", q)))
    return _page_json(stmt, limit, cursor)


def posts_of(user_id: int, *, limit: int, cursor: str | None) -> bytes:
    get_public(user_id)
    return _page_json(_ids().where(Post.author_id == user_id), limit, cursor)


def feed(user_id: int, *, limit: int, cursor: str | None) -> bytes:
    """Posts by the users `user_id` follows, newest first."""
    followed = select(Follow.followed_id).where(Follow.follower_id == user_id)
    return _page_json(_ids().where(Post.author_id.in_(followed), User.is_active), limit, cursor)


def create_post(author_id: int, title: str, body: str) -> Post:
    post = Post(author_id=author_id, title=title, body=body)
    db.session.add(post)
    bump_counters(author_id, post_count=1)
    db.session.commit()
    cache.invalidate(cache.profile_key(author_id))
    return get_post(post.id)


def _editable(post_id: int, actor: User) -> Post:
    """The post, locked, if `actor` may change it: its author or an admin."""
    post = get_post(post_id, for_update=True)
    if post.author_id != actor.id and not actor.is_admin:
        raise Forbidden("Only the author or an admin may change this post.")
    return post


def update_post(post_id: int, actor: User, changes: dict, if_match: ETags | None) -> Post:
    post = _editable(post_id, actor)
    check_if_match(if_match, post.version)
    for field, value in changes.items():
        setattr(post, field, value)
    post.version = Post.version + 1
    post.updated_at = func.now()
    db.session.commit()
    cache.invalidate(cache.post_key(post_id))
    return get_post(post_id)


def delete_post(post_id: int, actor: User, if_match: ETags | None) -> None:
    post = _editable(post_id, actor)
    check_if_match(if_match, post.version)
    db.session.execute(delete(Post).where(Post.id == post.id))
    bump_counters(post.author_id, post_count=-1)
    db.session.commit()
    cache.invalidate(cache.post_key(post_id), cache.profile_key(post.author_id))
