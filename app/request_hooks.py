"""What every request and response gets, whatever the route: a request id, the security
and caching headers, and no cookie session."""

from __future__ import annotations

import re
import time
import uuid

from flask import Flask, g, request
from flask.sessions import SessionInterface

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# on every response; a route never sets these itself
_SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
]


class NoCookieSessions(SessionInterface):
    """A token API keeps no cookie session: Flask's default signs and parses one on
    every request for nothing."""

    def open_session(self, app, request):
        return None  # Flask then hands out its read-only NullSession


def register_request_hooks(app: Flask) -> None:
    @app.before_request
    def _take_request_id():
        """Every response carries X-Request-ID: the client's when it is sane, else a new one.
        Also starts the request's clock (read by the request log and the metrics)."""
        g.started = time.perf_counter()
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex

    @app.after_request
    def _standard_headers(response):
        headers = response.headers
        headers.extend(_SECURITY_HEADERS)
        headers.add("X-Request-ID", g.get("request_id") or uuid.uuid4().hex)
        if "HTTP_AUTHORIZATION" in request.environ or request.path.startswith("/api/v1/auth/"):
            # tokens and private data must not sit in any cache
            headers["Cache-Control"] = "no-store"
        status = response.status_code
        if status == 204:
            headers.pop("Content-Type", None)
        if status not in (429, 503) and "Retry-After" in headers:
            # Flask-Limiter adds Retry-After to every limited response; it means "wait" only here
            del headers["Retry-After"]
        return response
