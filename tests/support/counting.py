"""How many SQL statements and Redis commands a piece of code sends, and what it takes
from the connection pool."""

from __future__ import annotations

import contextlib

from sqlalchemy import event


class QueryCounter:
    def __init__(self):
        self.statements: list[str] = []

    def __call__(self, _conn, _cursor, statement, *_args):
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK TO")):
            self.statements.append(statement)

    @property
    def count(self) -> int:
        return len(self.statements)


def redis_calls(redis_client, command: str) -> int:
    """How many times the Redis server has run `command` so far (INFO commandstats)."""
    return redis_client.info("commandstats").get(f"cmdstat_{command.lower()}", {}).get("calls", 0)


@contextlib.contextmanager
def pool_traffic(engine):
    """The statements the engine's cursor events see (each with the psycopg connection
    and its autocommit then), and the pool's checkouts, checkins and invalidations, in
    the block."""
    seen = {"statements": [], "checkouts": 0, "checkins": 0, "invalidations": 0}

    def statement(conn, _cursor, sql, *_args):
        raw = conn.connection.dbapi_connection
        seen["statements"].append((sql.split()[0], raw, raw.autocommit))

    def checkout(*_args):
        seen["checkouts"] += 1

    def checkin(*_args):
        seen["checkins"] += 1

    def invalidate(*_args):
        seen["invalidations"] += 1

    listeners = [
        ("before_cursor_execute", statement),
        ("checkout", checkout),
        ("checkin", checkin),
        ("invalidate", invalidate),
    ]
    for name, listener in listeners:
        event.listen(engine, name, listener)
    try:
        yield seen
    finally:
        for name, listener in listeners:
            event.remove(engine, name, listener)
