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

from sqlalchemy import Select, tuple_

from app.errors import ValidationFailed


@dataclass(frozen=True)
class Page:
    items: list
    next_cursor: str | None


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


def keyset_page(
    stmt: Select, keys: Sequence, kinds: Sequence[type], *, limit: int, cursor: str | None, descending: bool = True
) -> Page:
    """Run `stmt` ordered by `keys` and return one page of its first column.

    `keys` are the column expressions of the sort key, all sorted the same way and
    also selected by `stmt` after the item itself (or, when the key is the item's own
    columns, not selected: then they are read off the item); `kinds` are their Python
    types, to check a cursor before it reaches SQL.
    """
    from app.extensions import db

    if cursor:
        after = decode_cursor(cursor, kinds)
        bound = tuple_(*keys)
        stmt = stmt.where(bound < tuple_(*after) if descending else bound > tuple_(*after))
    stmt = stmt.order_by(*[k.desc() if descending else k.asc() for k in keys]).limit(limit + 1)
    rows = db.session.execute(stmt).all()
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        values = last[1:] if len(last) > 1 else [getattr(last[0], k.key) for k in keys]
        next_cursor = encode_cursor(values)
    return Page([row[0] for row in rows], next_cursor)
