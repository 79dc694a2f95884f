"""How many SQL statements and Redis commands a piece of code sends."""

from __future__ import annotations


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
