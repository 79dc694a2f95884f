"""Keyset pagination: `?limit=&cursor=` in, `{items, next_cursor}` out.

The cursor is the sort key of the last row served, base64url-encoded JSON: opaque to
clients, cheap to check, and a page is one index range scan however deep it is (no
OFFSET). Rows added while a client pages through land before its cursor, so no row is
missed or repeated.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Label, Select, bindparam, tuple_

from app import cache
from app.db import db, select_rows
from app.errors import ValidationFailed

PAGE_MAX = 100  # the largest `limit` a client may ask for


@dataclass(frozen=True)
class Page:
    items: list
    next_cursor: str | None


def page_json(items: Sequence[bytes], next_cursor: str | None) -> bytes:
    """A page whose items are already JSON (from a cache): `{"items": [...], "next_cursor": ...}`."""
    return b'{"items":[%s],"next_cursor":%s}' % (b",".join(items), json.dumps(next_cursor).encode())


def encode_cursor(values: Sequence[Any]) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, uuid.UUID) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kinds: Sequence[type]) -> list:
    """Decode and type-check a cursor against the key's column kinds."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or len(raw) != len(kinds):
            raise ValueError("wrong shape")
        values = []
        for value, kind in zip(raw, kinds, strict=True):
            if kind is datetime:
                values.append(datetime.fromisoformat(value))
            elif kind is uuid.UUID:
                values.append(uuid.UUID(value))
            elif kind is int and isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
                values.append(value)
            else:
                raise ValueError("wrong type")
        return values
    except (ValueError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed(
            "The cursor is not valid.", errors={"cursor": ["Not a cursor this API issued."]}
        ) from None


def comes_after(keys: Sequence, values: Sequence, descending: bool = True):
    """The condition "sorts after `values`" on the sort key `keys`."""
    bound = tuple_(*keys)
    return bound < tuple_(*values) if descending else bound > tuple_(*values)


def keyset_page(
    stmt: Select, keys: Sequence, kinds: Sequence[type], *, limit: int, cursor: str | None, descending: bool = True
) -> Page:
    """Run `stmt` ordered by `keys` and return one page of its first column.

    `keys` are the column expressions of the sort key, all sorted the same way and
    also selected by `stmt` after the item itself (or, when the key is the item's own
    columns, not selected: then they are read off the item); `kinds` are their Python
    types, to check a cursor before it reaches SQL.
    """
    if cursor:
        stmt = stmt.where(comes_after(keys, decode_cursor(cursor, kinds), descending))
    stmt = stmt.order_by(*[k.desc() if descending else k.asc() for k in keys]).limit(limit + 1)
    return _page_of(db.session.execute(stmt).all(), keys, limit)


def _page_of(rows: Sequence, keys: Sequence, limit: int) -> Page:
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        values = last[1:] if len(last) > 1 else [getattr(last[0], k.key) for k in keys]
        next_cursor = encode_cursor(values)
    return Page([row[0] for row in rows], next_cursor)


class KeysetQuery:
    """A keyset-paged query of plain columns, built once per process (the hot lists).

    Building a SELECT and finding it in SQLAlchemy's compiled cache costs more CPU than
    PostgreSQL spends on a page of ids, and so does the ORM layer around a query of
    plain columns. So the two statements a list needs, the first page and the pages
    after a cursor, are built once with bound parameters and run on the connection.

    `build(after)` returns the SELECT: the item, then the columns of the sort key.
    `after` is None for the first page, else the cursor's values as bound parameters,
    for a query that must also cut a subquery at the cursor (the feed); the cut on the
    sort key itself is added here.
    """

    def __init__(self, build, kinds: Sequence[type], *, descending: bool = True):
        self.kinds = kinds
        self._first = self._finish(build(None), None, descending)
        after = tuple(bindparam(f"after_{i}") for i in range(len(kinds)))
        self._next = self._finish(build(after), after, descending)

    @staticmethod
    def _finish(stmt: Select, after: tuple | None, descending: bool) -> Select:
        keys = [k.element if isinstance(k, Label) else k for k in list(stmt.selected_columns)[1:]]
        if after is not None:
            stmt = stmt.where(comes_after(keys, after, descending))
        return stmt.order_by(*[k.desc() if descending else k.asc() for k in keys]).limit(bindparam("page_limit"))

    def page(
        self, *, limit: int, cursor: str | None, cached_as: str | None = None, timeout_ms: int | None = None, **params
    ) -> Page:
        """One page; with `cached_as`, the first page comes from that cache key; with
        `timeout_ms`, the query stops after that long (select_rows)."""
        if cached_as and not cursor:
            return self._cached_first_page(cached_as, limit, params)
        params["page_limit"] = limit + 1
        if cursor:
            params.update((f"after_{i}", v) for i, v in enumerate(decode_cursor(cursor, self.kinds)))
        rows = select_rows(self._next if cursor else self._first, params, timeout_ms=timeout_ms)
        return _page_of(rows, (), limit)

    def _cached_first_page(self, key: str, limit: int, params: dict) -> Page:
        """The first page of a list read most (the newest posts, the users), answered
        from the cache with no query. The writers that change such a list drop its key
        (app/cache.py says when)."""
        entry = cache.get(key)
        if entry is None:
            tombstone = cache.tombstone_now(key)  # before the query: its result is then fresh
            entry = self.first_entry(params)
            cache.put_unless_written(key, entry, tombstone)
        return self.page_from_entry(entry, limit)

    def first_entry(self, params: dict) -> bytes:
        """The first page as a cache entry: the first PAGE_MAX + 1 items (integer ids),
        one a line with the cursor after it (`id cursor`), so one entry serves every
        `limit` and a page reads only its own lines."""
        rows = select_rows(self._first, {**params, "page_limit": PAGE_MAX + 1})
        return "\n".join(f"{row[0]:d} {encode_cursor(row[1:])}" for row in rows).encode()

    @staticmethod
    def page_from_entry(entry: bytes, limit: int) -> Page:
        if not entry:
            return Page([], None)
        lines = entry.split(b"\n", limit)  # the page's lines, then the rest (if any) in one
        ids, cursors = zip(*(line.split(b" ", 1) for line in lines[:limit]), strict=True)
        return Page([int(item) for item in ids], cursors[-1].decode() if len(lines) > limit else None)
