"""One error format for every failure: RFC 9457 problem details.

Service functions raise the APIError subclasses below; HTTP errors from Flask, webargs
and flask-jwt-extended, database outages and unexpected exceptions all end up here and
leave as `application/problem+json`, never an HTML page or a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from http import HTTPStatus

from flask import Flask, current_app, g, request
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
QUERY_CANCELED = "57014"  # SQLSTATE of a statement stopped by statement_timeout


class APIError(Exception):
    """A failure a client can act on. `errors` maps a field to its messages; `extra`
    adds members to the problem (RFC 9457 extensions)."""

    status = 400
    title: str | None = None

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: dict | None = None,
        headers: dict | None = None,
        extra: dict | None = None,
    ):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra


class BadRequest(APIError):
    status = 400


class Unauthorized(APIError):
    status = 401


class Forbidden(APIError):
    status = 403


class NotFound(APIError):
    status = 404


class Conflict(APIError):
    status = 409


class Gone(APIError):
    status = 410


class PreconditionFailed(APIError):
    status = 412


def etag_of(version: int) -> str:
    """The entity tag of an editable resource: its version, bumped on every change."""
    return f"v{version}"


BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="api"'}


def account_gone() -> Unauthorized:
    """The caller's token is sound, but its account no longer exists or is inactive."""
    return Unauthorized("The account of this token no longer exists or is inactive.", headers=BEARER_CHALLENGE)


def check_version(expected: Collection[int] | None, version: int) -> None:
    """412 unless `version` is one the client expects; None means the client set no precondition."""
    if expected is not None and version not in expected:
        raise PreconditionFailed(
            "The resource changed since you read it; fetch it again and retry.",
            errors={"If-Match": [f'current ETag is "{etag_of(version)}"']},
        )


class UnsupportedMediaType(APIError):
    status = 415


class ValidationFailed(APIError):
    status = 422


class TooManyRequests(APIError):
    status = 429


class ServiceUnavailable(APIError):
    status = 503


def problem(status: int, detail: str | None = None, *, errors=None, headers=None, title=None, extra=None):
    """Build a problem+json response; `extra` adds extension members."""
    body = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail or HTTPStatus(status).description,
        "instance": request.path if request else None,
        "request_id": g.get("request_id"),
    }
    if errors:
        body["errors"] = errors
    body.update(extra or {})
    response = current_app.json.response(body)
    response.status_code = status
    response.mimetype = PROBLEM_JSON
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _field_errors(messages):
    """webargs nests errors under the location ("json", "query"); drop that level."""
    if isinstance(messages, dict) and len(messages) == 1:
        ((location, inner),) = messages.items()
        if location in {"json", "query", "querystring", "form", "headers", "files", "path", "view_args"}:
            return inner if isinstance(inner, dict) else {"_body": inner}
    return messages


def problem_from_http_exception(error: HTTPException):
    data = getattr(error, "data", None) or {}
    errors = data.get("errors") or data.get("messages")
    headers = dict(data.get("headers") or {})
    # keep headers werkzeug attaches (Allow on 405, WWW-Authenticate, Retry-After)
    for key, value in error.get_headers():
        if key.lower() != "content-type":
            headers[key] = value
    detail = data.get("message") or error.description
    if errors is not None:
        errors = _field_errors(errors)
        if error.code == 422:
            detail = "The request did not validate; see errors for each field."
        elif error.code == 400 and isinstance(errors, dict) and "_body" in errors:
            detail = "; ".join(str(m) for m in errors["_body"]) if isinstance(errors["_body"], list) else detail
    if error.code >= 500:
        log.error("HTTP %s on %s %s: %s", error.code, request.method, request.path, error)
    return problem(error.code or 500, detail, errors=errors, headers=headers)


def register_error_handlers(app: Flask, *, on_pool_timeout: Callable[[], None] = lambda: None) -> None:
    """Answer every exception as problem+json; `on_pool_timeout` is called for each
    request that found no free database connection (the metrics count them)."""

    @app.errorhandler(APIError)
    def _api_error(error: APIError):
        return problem(
            error.status, error.detail, errors=error.errors, headers=error.headers, title=error.title, extra=error.extra
        )

    def _unavailable(detail: str):
        return problem(503, detail, headers={"Retry-After": str(current_app.config["RETRY_AFTER_SECONDS"])})

    @app.errorhandler(PoolTimeoutError)
    def _pool_exhausted(error):
        on_pool_timeout()
        log.warning("database pool exhausted: %s", error)
        return _unavailable("The service is busy; no database connection was free. Retry shortly.")

    @app.errorhandler(OperationalError)
    def _database_down(error):
        if getattr(error.orig, "sqlstate", None) == QUERY_CANCELED:
            log.warning("statement stopped by its timeout: %s", error)
            return _unavailable("The request took too long in the database and was stopped. Retry later.")
        log.warning("database unavailable: %s", error)
        return _unavailable("The database is unavailable. Retry shortly.")

    @app.errorhandler(DBAPIError)
    def _database_error(error):
        # a statement the database refused for a reason we did not foresee
        log.exception("database error", exc_info=error)
        return problem(500, "An internal error occurred.")

    @app.errorhandler(Exception)
    def _unexpected(error):
        if isinstance(error, HTTPException):
            return problem_from_http_exception(error)
        log.exception("unhandled error", exc_info=error)
        return problem(500, "An internal error occurred.")
