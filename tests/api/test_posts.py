"""/posts and /feed: writing, reading, searching, ownership and preconditions."""

from __future__ import annotations

import tempfile
import time
from datetime import datetime

import pytest
from psycopg.pq import Trace, TransactionStatus
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import OperationalError

from app.db import db, select_rows
from app.models import Post, User
from tests.support.factories import AdminFactory, FollowFactory, PostFactory, UserFactory

POSTS = "/api/v1/posts"


def post_count() -> int:
    return db.session.query(Post).count()


def test_create_post_returns_201_location_etag_and_author(client, login):
    author = UserFactory()
    response = client.post(POSTS, json={"title": "Hello", "body": "First post."}, headers=login(author))
    assert response.status_code == 201
    body = response.get_json()
    assert response.headers["Location"] == f"{POSTS}/{body['id']}"
    assert response.headers["ETag"] == '"v1"'
    assert body["author"] == {"id": author.id, "username": author.username, "display_name": author.display_name}
    assert client.get(f"/api/v1/users/{author.id}").get_json()["post_count"] == 1


def test_create_post_needs_a_token(client):
    assert client.post(POSTS, json={"title": "t", "body": "b"}).status_code == 401
    assert post_count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"body": "b"}, "title"),
        ({"title": "t"}, "body"),
        ({"title": "", "body": "b"}, "title"),
        ({"title": "  ", "body": "b"}, "title"),
        ({"title": "t" * 201, "body": "b"}, "title"),
        ({"title": "t", "body": "b" * 20001}, "body"),
        ({"title": "t", "body": "b", "author_id": 1}, "author_id"),
        ({"title": ["t"], "body": "b"}, "title"),
        ({"title": None, "body": "b"}, "title"),
    ],
)
def test_create_post_validation_writes_nothing(client, login, body, field):
    response = client.post(POSTS, json=body, headers=login(UserFactory()))
    assert response.status_code == 422
    assert field in response.get_json()["errors"]
    assert post_count() == 0


def test_get_post_with_etag_and_404(client):
    post = PostFactory()
    response = client.get(f"{POSTS}/{post.id}")
    assert response.status_code == 200
    assert response.get_json()["title"] == post.title
    assert response.headers["ETag"] == '"v1"'
    assert client.get(f"{POSTS}/999999").status_code == 404


def test_author_edits_with_if_match(client, login):
    post = PostFactory()
    headers = login(db.session.get(User, post.author_id))
    response = client.patch(f"{POSTS}/{post.id}", json={"title": "Edited"}, headers={**headers, "If-Match": '"v1"'})
    assert response.status_code == 200
    assert response.get_json()["title"] == "Edited"
    assert response.headers["ETag"] == '"v2"'
    stale = client.patch(f"{POSTS}/{post.id}", json={"title": "Lost"}, headers={**headers, "If-Match": '"v1"'})
    assert stale.status_code == 412
    assert client.get(f"{POSTS}/{post.id}").get_json()["title"] == "Edited"


def test_edit_without_if_match_is_allowed_and_star_matches(client, login):
    post = PostFactory()
    headers = login(db.session.get(User, post.author_id))
    assert client.patch(f"{POSTS}/{post.id}", json={"body": "new"}, headers=headers).status_code == 200
    assert (
        client.patch(f"{POSTS}/{post.id}", json={"body": "newer"}, headers={**headers, "If-Match": "*"}).status_code
        == 200
    )


@pytest.mark.parametrize("if_match", ['"abc', ",,,", 'W/"v1"', '"v01"', '"1"', ""])
def test_an_if_match_naming_no_version_is_412_and_changes_nothing(client, login, if_match):
    post = PostFactory(title="Kept")
    headers = {**login(db.session.get(User, post.author_id)), "If-Match": if_match}
    response = client.patch(f"{POSTS}/{post.id}", json={"title": "Lost"}, headers=headers)
    assert response.status_code == 412
    assert response.get_json()["errors"] == {"If-Match": ['current ETag is "v1"']}
    assert client.delete(f"{POSTS}/{post.id}", headers=headers).status_code == 412
    kept = client.get(f"{POSTS}/{post.id}")
    assert (kept.get_json()["title"], kept.headers["ETag"]) == ("Kept", '"v1"')


def test_if_match_listing_several_etags_matches_any_of_them(client, login):
    post = PostFactory()
    headers = {**login(db.session.get(User, post.author_id)), "If-Match": '"v7", W/"v9", "v1"'}
    response = client.patch(f"{POSTS}/{post.id}", json={"title": "Edited"}, headers=headers)
    assert response.status_code == 200
    assert response.headers["ETag"] == '"v2"'
    assert client.patch(f"{POSTS}/{post.id}", json={"title": "Lost"}, headers=headers).status_code == 412


def test_another_user_cannot_edit_or_delete_and_nothing_changes(client, login):
    post = PostFactory(title="Mine")
    intruder = login(UserFactory())
    assert client.patch(f"{POSTS}/{post.id}", json={"title": "Yours"}, headers=intruder).status_code == 403
    assert client.delete(f"{POSTS}/{post.id}", headers=intruder).status_code == 403
    body = client.get(f"{POSTS}/{post.id}").get_json()
    assert body["title"] == "Mine"
    assert client.get(f"/api/v1/users/{post.author_id}").get_json()["post_count"] == 1


def test_admin_may_edit_and_delete_any_post(client, login):
    post = PostFactory()
    admin = login(AdminFactory())
    assert client.patch(f"{POSTS}/{post.id}", json={"title": "Moderated"}, headers=admin).status_code == 200
    assert client.delete(f"{POSTS}/{post.id}", headers=admin).status_code == 204
    assert client.get(f"{POSTS}/{post.id}").status_code == 404


def test_delete_keeps_the_count_and_a_stale_etag_blocks_it(client, login):
    post = PostFactory()
    headers = login(db.session.get(User, post.author_id))
    client.patch(f"{POSTS}/{post.id}", json={"title": "v2"}, headers=headers)
    assert client.delete(f"{POSTS}/{post.id}", headers={**headers, "If-Match": '"v1"'}).status_code == 412
    response = client.delete(f"{POSTS}/{post.id}", headers={**headers, "If-Match": '"v2"'})
    assert response.status_code == 204
    assert client.get(f"/api/v1/users/{post.author_id}").get_json()["post_count"] == 0
    assert client.delete(f"{POSTS}/{post.id}", headers=headers).status_code == 404


def test_patch_validation(client, login):
    post = PostFactory()
    headers = login(db.session.get(User, post.author_id))
    for body, field in [({}, "_schema"), ({"title": ""}, "title"), ({"author_id": 2}, "author_id")]:
        response = client.patch(f"{POSTS}/{post.id}", json=body, headers=headers)
        assert response.status_code == 422
        assert field in response.get_json()["errors"]
    assert client.patch(f"{POSTS}/999999", json={"title": "x"}, headers=headers).status_code == 404


def test_list_newest_first_and_by_author(client):
    first, second = UserFactory(), UserFactory()
    a = PostFactory(author=first)
    b = PostFactory(author=second)
    c = PostFactory(author=first)
    assert [p["id"] for p in client.get(POSTS).get_json()["items"]] == [c.id, b.id, a.id]
    assert [p["id"] for p in client.get(f"{POSTS}?author={first.id}").get_json()["items"]] == [c.id, a.id]
    assert client.get(f"{POSTS}?author=0").status_code == 422


def test_posts_of_inactive_authors_are_hidden(client):
    visible = PostFactory()
    PostFactory(author=UserFactory(is_active=False))
    assert [p["id"] for p in client.get(POSTS).get_json()["items"]] == [visible.id]


def test_full_text_search(client):
    hit_title = PostFactory(title="Tuning PostgreSQL indexes", body="Some words.")
    hit_body = PostFactory(title="Notes", body="Why the planner picked an index scan.")
    PostFactory(title="Redis", body="Caching profiles.")
    ids = {p["id"] for p in client.get(f"{POSTS}?q=index").get_json()["items"]}
    assert ids == {hit_title.id, hit_body.id}
    both = client.get(POSTS, query_string={"q": '"planner picked" -redis'}).get_json()["items"]
    assert [p["id"] for p in both] == [hit_body.id]
    assert client.get(POSTS, query_string={"q": "!!! & |"}).status_code == 200


@pytest.mark.no_transaction
def test_a_search_that_runs_too_long_is_stopped_and_answered_503(app, committed, client, monkeypatch):
    """The search waits on a lock held here: a slow statement, stopped by the search's own
    timeout (well before the 15 s one every statement has), in a GET's autocommit."""
    monkeypatch.setitem(app.config, "SEARCH_STATEMENT_TIMEOUT_MS", 300)
    with app.app_context():
        post_id = PostFactory(title="A needle in the stack").id
        holder = db.engine.connect()
    try:
        holder.execute(text("LOCK TABLE posts IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        stopped = client.get(POSTS, query_string={"q": "needle"})
        elapsed = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert stopped.status_code == 503, stopped.get_json()
    assert stopped.mimetype == "application/problem+json"
    # ours, or the rate limit's window if later (Flask-Limiter keeps the later of the two)
    assert int(stopped.headers["Retry-After"]) >= app.config["RETRY_AFTER_SECONDS"]
    assert stopped.get_json()["detail"].startswith("The search took too long")
    assert 0.3 <= elapsed < 5
    # the same search answers once nothing holds it up; the connection kept no timeout
    assert [p["id"] for p in client.get(POSTS, query_string={"q": "needle"}).get_json()["items"]] == [post_id]
    with app.app_context():
        assert db.session.scalar(text("SHOW statement_timeout")) == "15s"


SETTINGS = select(func.current_setting("statement_timeout"), func.current_setting("plan_cache_mode"))


def test_the_search_timeout_lasts_only_the_search(app):
    """Inside a transaction (here the test's) the search's settings last a savepoint:
    they are set back after it, and a search stopped leaves the transaction usable."""
    assert select_rows(SETTINGS, {}, timeout_ms=1234) == [("1234ms", "force_custom_plan")]
    assert db.session.execute(SETTINGS).one() == ("15s", "auto")
    with pytest.raises(OperationalError, match="statement timeout"):
        select_rows(select(func.pg_sleep(2)), {}, timeout_ms=50)
    assert db.session.execute(SETTINGS).one() == ("15s", "auto")


@pytest.mark.no_transaction
def test_in_a_read_request_the_search_is_one_round_trip_of_its_own(app):
    """A GET's reads run in autocommit: the search's settings and its query go to
    PostgreSQL as one message, which runs as one transaction of its own (one round trip,
    traced at the driver); the connection keeps none of the settings, also when the
    query is stopped."""
    used = []

    def trace(dbapi_connection, *_args):
        used.append(dbapi_connection)
        dbapi_connection.pgconn.trace(log.fileno())
        dbapi_connection.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS)

    with tempfile.TemporaryFile("w+") as log, app.test_request_context(POSTS, method="GET"):
        engine = db.engine
        event.listen(engine, "checkout", trace)
        try:
            assert select_rows(SETTINGS, {}, timeout_ms=1234) == [("1234ms", "force_custom_plan")]
        finally:
            event.remove(engine, "checkout", trace)
            for connection in used:
                connection.pgconn.untrace()
        log.seek(0)
        messages = [line.split("\t")[:3:2] for line in log.read().splitlines()]
        assert len(used) == 1
        sent = [name for side, name in messages if side == "F"]
        assert sent == ["Query"], messages
        assert [name for side, name in messages if side == "B"].count("ReadyForQuery") == 1
        raw = used[0]
        assert raw.info.transaction_status == TransactionStatus.IDLE
        assert raw.execute("SELECT current_setting('statement_timeout')").fetchone() == ("15s",)
        raw.rollback()  # back in the pool, as it came: no transaction
        with pytest.raises(OperationalError, match="statement timeout"):
            select_rows(select(func.pg_sleep(2)), {}, timeout_ms=50)
        assert select_rows(SETTINGS, {}) == [("15s", "auto")]
        db.session.remove()


def test_a_search_sent_again_and_again_is_planned_for_its_own_words_each_time(app):
    """psycopg prepares a statement sent five times on a connection; PostgreSQL would then
    plan the search once for every word (a generic plan). Inside bounded_query it never
    does, and the connection's own setting is left as it was."""
    from app.posts.service import list_posts

    PostFactory.create_batch(3, body="a needle in the hay")
    PostFactory.create_batch(3, body="only hay")
    for _ in range(15):
        assert b"needle" in list_posts(limit=20, cursor=None, q="needle")
    plans = db.session.execute(
        text("SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE '%websearch%'")
    ).all()
    assert plans, "the search was not prepared: nothing is checked"
    assert [generic for generic, _ in plans] == [0] * len(plans)
    assert sum(custom for _, custom in plans) >= 10
    assert db.session.scalar(text("SHOW plan_cache_mode")) == "auto"


def test_searches_are_limited_per_address_and_the_plain_list_is_not(client, app, monkeypatch):
    monkeypatch.setitem(app.config, "RATELIMIT_SEARCH_PER_IP", "3 per minute")
    here, there = {"REMOTE_ADDR": "192.0.2.10"}, {"REMOTE_ADDR": "192.0.2.11"}
    statuses = [client.get(POSTS, query_string={"q": "word"}, environ_base=here).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = client.get(POSTS, query_string={"q": "other"}, environ_base=here)
    assert limited.status_code == 429 and limited.mimetype == "application/problem+json"
    assert int(limited.headers["Retry-After"]) > 0
    assert client.get(POSTS, query_string={"q": "word"}, environ_base=there).status_code == 200
    assert [client.get(POSTS, environ_base=here).status_code for _ in range(5)] == [200] * 5
    assert client.get(POSTS, query_string={"author": 1}, environ_base=here).status_code == 200


def test_feed_shows_posts_of_followed_users_only(client, login):
    me, followed, stranger = UserFactory(), UserFactory(), UserFactory()
    FollowFactory(follower_id=me.id, followed_id=followed.id)
    mine = PostFactory(author=followed)
    PostFactory(author=stranger)
    PostFactory(author=me)
    items = client.get("/api/v1/feed", headers=login(me)).get_json()["items"]
    assert [p["id"] for p in items] == [mine.id]
    assert client.get("/api/v1/feed").status_code == 401


def test_deleting_a_user_cascades(client):
    post = PostFactory()
    FollowFactory(follower_id=post.author_id)
    db.session.delete(db.session.get(User, post.author_id))
    db.session.commit()
    assert post_count() == 0


def _ids_page_by_page(client, url: str, limit: int, headers=None) -> list[int]:
    ids, cursor = [], None
    while True:
        page = f"{url}{'&' if '?' in url else '?'}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        response = client.get(page, headers=headers or {})
        assert response.status_code == 200, url
        ids += [item["id"] for item in response.get_json()["items"]]
        if not (cursor := response.get_json()["next_cursor"]):
            return ids


def test_an_edited_post_keeps_its_place_in_every_list(client, login):
    """Lists are newest first by when a post was written: editing the oldest post (its
    updated_at becomes the newest time of all) moves it nowhere, on the first page or
    page by page."""
    reader, author, other = UserFactory(), UserFactory(), UserFactory()
    for followed in (author, other):
        FollowFactory(follower_id=reader.id, followed_id=followed.id)
    oldest = PostFactory(author=author, body="Tuning postgres indexes.")
    middle = PostFactory(author=other, body="Vacuuming postgres tables.")
    newest = PostFactory(author=author, body="Replicating postgres.")
    response = client.patch(f"{POSTS}/{oldest.id}", json={"title": "Edited"}, headers=login(author))
    assert response.status_code == 200
    edited = response.get_json()
    assert datetime.fromisoformat(edited["updated_at"]) > newest.created_at  # the latest change of all
    everyone, authors = [newest.id, middle.id, oldest.id], [newest.id, oldest.id]
    reader_headers = login(reader)
    for url, expected, headers in [
        (POSTS, everyone, None),
        (f"{POSTS}?author={author.id}", authors, None),
        (f"{POSTS}?q=postgres", everyone, None),
        (f"/api/v1/users/{author.id}/posts", authors, None),
        ("/api/v1/feed", everyone, reader_headers),
    ]:
        for limit in (100, 1):
            assert _ids_page_by_page(client, url, limit, headers) == expected, (url, limit)
    listed = client.get("/api/v1/users?include=posts").get_json()["items"]
    assert [p["id"] for p in next(u for u in listed if u["id"] == author.id)["posts"]] == authors
