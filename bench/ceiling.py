"""The ceiling and the floors, served by the same gunicorn settings as the app.

The ceiling is a bare Flask JSON endpoint: the most any endpoint could do on this
machine. A floor is a bare Flask endpoint that does only the I/O of one of the app's
endpoints, through the drivers themselves (psycopg and redis-py, one connection per
thread): no authentication, no validation, no ORM, no pool, no cache library. What the
app's endpoint reaches is then measured against two bounds: the ceiling, and what the
same work can reach in this stack at best.

- `/floor/users/<id>`: a cache miss, as `GET /users/{id}` uncached: a Redis GET that
  finds nothing, the user's row by primary key, its JSON, a Redis SET of it.
- `/floor/posts` (POST): a post, as `POST /posts`: the app's own statement in autocommit
  (the insert that counts the post and reads the followers to notify, committed as it
  ends; the followers read again after it only when a follow came in meanwhile), then
  one Redis round trip deleting the author's profile and the followers' feed pages
  (under keys of the floor's own: the app's cache is not touched).

Statements go on psycopg's extended protocol, as the app's: psycopg prepares those it
has run a few times on a connection.
"""

from __future__ import annotations

import functools
import json
import os
import threading

from flask import Flask, Response, request

app = Flask(__name__)


@app.get("/ping")
def ping():
    return {"status": "ok"}


_per_thread = threading.local()


def _database():
    import psycopg

    conn = getattr(_per_thread, "database", None)
    if conn is None or conn.closed:
        url = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://", 1)
        conn = _per_thread.database = psycopg.connect(url, autocommit=True)
    return conn


def _redis():
    import redis

    client = getattr(_per_thread, "redis", None)
    if client is None:
        client = _per_thread.redis = redis.Redis.from_url(os.environ["REDIS_URL"])
    return client


@functools.cache
def _profile_statement() -> tuple[str, tuple[str, ...]]:
    """The public profile's columns (the app's schema's fields) of an active user, by id."""
    from app.users.schemas import PublicUserSchema

    columns = tuple(PublicUserSchema().fields)
    return f"SELECT {', '.join(columns)} FROM users WHERE id = %s AND is_active", columns


@app.get("/floor/users/<int:user_id>")
def profile_miss(user_id: int):
    cache = _redis()
    if (cached := cache.get(f"floor:never:{user_id}")) is not None:  # never set: each request a miss
        return Response(cached, mimetype="application/json")
    statement, columns = _profile_statement()
    profile = dict(zip(columns, _database().execute(statement, (user_id,)).fetchone(), strict=True))
    profile["created_at"] = profile["created_at"].isoformat()
    body = json.dumps(profile).encode()
    cache.set(f"floor:user:{user_id}", body, ex=60)
    return Response(body, mimetype="application/json")


@functools.cache
def _post_statements() -> tuple[str, str]:
    """The app's statements of a post, compiled for psycopg."""
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    from app.posts.service import _CREATE, _FOLLOWERS_TO_NOTIFY

    dialect = PGDialect_psycopg()
    return tuple(str(stmt.compile(dialect=dialect)) for stmt in (_CREATE, _FOLLOWERS_TO_NOTIFY))


FLOOR_AUTHOR = 2  # user2, as the app's POST /posts scenario


@app.post("/floor/posts")
def post():
    body = request.get_json()
    database = _database()
    create, followers_to_notify = _post_statements()
    # FEED_PULL_THRESHOLD as by default; no email verification asked, as in make bench
    threshold = 10_000
    params = {"author": FLOOR_AUTHOR, "must_verify": False, "threshold": threshold, **body}
    row = database.execute(create, params).fetchone()
    post_id, title, text, version, created_at, updated_at, author_id, username, display_name, _, followers = row
    if followers is None:
        params = {"author": FLOOR_AUTHOR, "threshold": threshold}
        _, followers = database.execute(followers_to_notify, params).fetchone()
    keys = [f"floor:user:{FLOOR_AUTHOR}", *(f"floor:feed:{follower}" for follower in followers)]
    _redis().delete(*keys)
    return Response(
        json.dumps(
            {
                "id": post_id,
                "title": title,
                "body": text,
                "version": version,
                "created_at": created_at.isoformat(),
                "updated_at": updated_at.isoformat(),
                "author": {"id": author_id, "username": username, "display_name": display_name},
            }
        ),
        status=201,
        mimetype="application/json",
    )
