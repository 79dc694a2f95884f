"""Logs as JSON lines, one per request, carrying the request id into Celery tasks.

A request's id (X-Request-ID) is put in the headers of every task it queues; the worker
puts it back in the log context while the task runs, so one id follows the work from
the HTTP request to the tasks it caused.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from contextvars import ContextVar

from flask import Flask, g, has_request_context, request
from pythonjsonlogger.json import JsonFormatter

task_request_id: ContextVar[str | None] = ContextVar("task_request_id", default=None)
log = logging.getLogger("app.request")


def current_request_id() -> str | None:
    if has_request_context():
        return g.get("request_id")
    return task_request_id.get()


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


# C0 and C1 controls, DEL, the Unicode line and paragraph separators, and lone surrogates
# (which UTF-8 cannot encode: the stream would drop the whole record)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# a traceback keeps its line breaks
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match) -> str:
    char = match.group()
    return _NAMED.get(char) or char.encode("unicode_escape").decode("ascii")


class EscapingFormatter(logging.Formatter):
    """Text logs, one line per record whatever a client put in a path or a field: control
    characters in the message and its fields are escaped (a `%0a` in a path must not
    forge a second line). A traceback keeps its line breaks, so it stays readable."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return line if line.isprintable() else _CONTROL.sub(_escaped, line)

    def formatException(self, ei) -> str:
        return _CONTROL_BUT_NEWLINE.sub(_escaped, super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _CONTROL_BUT_NEWLINE.sub(_escaped, super().formatStack(stack_info))


def configure_logging(level: str, fmt: str) -> None:
    """Send every log record to stdout, as JSON (LOG_FORMAT=json) or as text."""
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def register_request_logging(app: Flask) -> None:
    @app.after_request
    def _log_request(response):
        if not log.isEnabledFor(logging.INFO):
            return response
        started = g.get("started")
        claims = g.get("_jwt_extended_jwt") or {}
        duration_ms = round((time.perf_counter() - started) * 1000, 2) if started else None
        log.info(
            "%s %s %s %sms",
            request.method,
            request.path,
            response.status_code,
            duration_ms,
            extra={
                "request_id": g.get("request_id"),
                "method": request.method,
                "route": request.url_rule.rule if request.url_rule else None,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": duration_ms,
                "user_id": claims.get("sub"),
            },
        )
        return response
