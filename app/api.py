"""HTTP plumbing every blueprint shares: the Api and blueprint classes, reading request
bodies, the documented error responses, auth documentation and ETag preconditions."""

from __future__ import annotations

import functools
import http
import json
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from cachetools import LRUCache
from flask import current_app, url_for
from flask import request as flask_request
from flask.json.provider import DefaultJSONProvider
from flask_jwt_extended import jwt_required
from flask_smorest import Api, Blueprint
from flask_smorest.utils import prepare_response
from webargs import core
from webargs.flaskparser import FlaskParser
from werkzeug.http import parse_etags
from werkzeug.routing import IntegerConverter

from app.db import READ_ONLY_METHODS
from app.errors import PROBLEM_JSON, BadRequest, UnsupportedMediaType, etag_of, problem_from_http_exception
from app.openapi import BEARER, REFRESH, SECURITY_SCHEMES, SWAGGER_UI_CONFIG, OperationConventions, swagger_ui_assets
from app.replicas import retry_on_primary
from app.schemas import PageArgsSchema, ProblemSchema

BIGINT_MAX = 2**63 - 1


class IdConverter(IntegerConverter):
    """`<id:name>`: a row id. Digits beyond PostgreSQL's bigint name no row, so they
    become 0 (which no row has) and get the view's own 404, not werkzeug's 405."""

    def to_python(self, value: str) -> int:
        number = int(value)
        return number if number <= BIGINT_MAX else 0


def register_id_converter(app, api) -> None:
    app.url_map.converters["id"] = IdConverter
    api.register_converter(IdConverter, lambda _c: {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX})


class InvalidJSON(ValueError):
    """A body that is not JSON this API reads; the message says why, for the client."""


def _refuse_constant(name: str):
    raise InvalidJSON(f"{name} is not a JSON value.")


def _parse_int(digits: str) -> int:
    try:
        return int(digits)
    except ValueError:  # beyond Python's int digits limit (sys.get_int_max_str_digits)
        raise InvalidJSON("A number has too many digits.") from None


_STRICT = {"parse_constant": _refuse_constant, "parse_int": _parse_int}
_DECODER = json.JSONDecoder(**_STRICT)  # built once: json.loads builds one per call given options


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, reading only RFC 8259 JSON in UTF-8, where every failure
    is an InvalidJSON (a ValueError, so request.get_json() answers 400 or, when silent,
    None): no NaN or Infinity, and neither nesting deeper than the interpreter's
    recursion limit (RecursionError) nor an integer beyond its digits limit escape as
    a 500."""

    def loads(self, s: str | bytes, **kwargs):
        decoder = json.JSONDecoder(**_STRICT, **kwargs) if kwargs else _DECODER
        try:
            return decoder.decode(s.decode("utf-8") if isinstance(s, bytes | bytearray) else s)
        except InvalidJSON:
            raise
        except json.JSONDecodeError as error:
            raise InvalidJSON(f"{error.msg} at line {error.lineno} column {error.colno}.") from None
        except UnicodeDecodeError:
            # strict: this also refuses surrogates encoded in UTF-8 (ED A0 80)
            raise InvalidJSON("The body is not UTF-8 text.") from None
        except RecursionError:
            raise InvalidJSON("The JSON is nested too deeply.") from None


def has_body(req) -> bool:
    return bool(req.content_length) or "chunked" in req.headers.get("Transfer-Encoding", "").lower()


class StrictParser(FlaskParser):
    """webargs' parser, checking a body's media type where the body is read.

    Authentication decorators sit outside `arguments`, so a request without a token is
    answered 401 before anything here looks at its body. A body in another media type
    than the operation takes is a 415, one that cannot be parsed a 400.

    Each schema decides on unknown fields (ours raise), in every location: webargs
    excludes unknown query-string fields by default; a typo in `?limt=` should be a 422
    naming the field, not silently ignored.
    """

    DEFAULT_UNKNOWN_BY_LOCATION = {location: None for location in FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION}
    PAGE_ARGS_REMEMBERED = 1024  # query strings, per process (each at most one request line)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._page_args = LRUCache(self.PAGE_ARGS_REMEMBERED)
        self._page_args_lock = threading.Lock()

    def parse(self, argmap, req=None, *, location=None, **kwargs):
        """A list's query arguments (PageArgsSchema, loaded from the query string alone)
        are remembered per schema and query string: the lists read most are asked with
        the same few query strings, and marshmallow and webargs spend more CPU on them
        than the feed's cached page does. Only what loaded is kept; each call gets its
        own dict."""
        if location != "query" or not isinstance(argmap, PageArgsSchema) or kwargs.get("validate"):
            return super().parse(argmap, req, location=location, **kwargs)
        key = (argmap, (req or flask_request).query_string)
        with self._page_args_lock:
            parsed = self._page_args.get(key)
        if parsed is None:
            parsed = super().parse(argmap, req, location=location, **kwargs)  # a 422 raises here
            with self._page_args_lock:
                self._page_args[key] = parsed
        return dict(parsed)

    def load_json(self, req, schema):
        if not has_body(req):
            return core.missing
        if not req.is_json:
            raise UnsupportedMediaType("Send the body as application/json.")
        try:
            return current_app.json.loads(req.get_data(cache=True))
        except InvalidJSON as error:
            raise BadRequest(f"The body is not valid JSON: {error}", errors={"_body": [str(error)]}) from None

    def load_querystring(self, req, schema):
        try:
            req.args  # noqa: B018  (werkzeug decodes it once, here)
        except UnicodeDecodeError:
            # raw bytes beyond ASCII (gunicorn refuses them; other servers pass them on)
            raise BadRequest("The query string is not UTF-8.") from None
        return super().load_querystring(req, schema)

    def load_form(self, req, schema):
        self._require_multipart(req, "Send the form as multipart/form-data.")
        return super().load_form(req, schema)

    def load_files(self, req, schema):
        self._require_multipart(req, "Upload the file as multipart/form-data.")
        return super().load_files(req, schema)

    @staticmethod
    def _require_multipart(req, detail: str) -> None:
        if req.mimetype != "multipart/form-data":
            raise UnsupportedMediaType(detail)


class RateLimit(NamedTuple):
    """A rate limit declared on a route: at most the config value `setting`, counted per
    `key()`, under its own `scope`; `options` go to Flask-Limiter's `limit`."""

    setting: str
    key: Callable[[], str]
    scope: str
    options: dict[str, Any]


def rate_limits_of(view) -> tuple[RateLimit, ...]:
    """The limits declared on a view, in the order they are written on it (top first)."""
    return tuple(reversed(getattr(view, "rate_limits", ())))


JOB_LOCATION = {"Location": {"schema": {"type": "string"}, "description": "the job to poll"}}


class ApiBlueprint(Blueprint):
    """flask-smorest's Blueprint, documenting the errors every operation may answer."""

    ARGUMENTS_PARSER = StrictParser()

    def __init__(self, *args, uses_database: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.uses_database = uses_database

    def route(self, rule, *, parameters=None, **options):
        register = super().route(rule, parameters=parameters, **options)

        def decorator(func):
            # gunicorn answers these itself, before the app (see register_problem_responses)
            for status in (414, 431):
                func = self.alt_response(status, response=http.HTTPStatus(status).name)(func)
            if self.uses_database:
                # any view that touches PostgreSQL may find it down or its pool exhausted
                func = self.alt_response(503, response="SERVICE_UNAVAILABLE")(func)
                if set(options.get("methods") or ["GET"]) <= READ_ONLY_METHODS:
                    func = retry_on_primary(func)
            return register(func)

        return decorator

    def arguments(self, schema, *, location="json", **kwargs):
        # one instance per route: webargs would build one (deep-copying every field) per
        # request from a class; loading does not change a marshmallow 4 schema
        if isinstance(schema, type):
            schema = schema()
        parse = super().arguments(schema, location=location, **kwargs)
        if location not in {"json", "form", "files"}:
            return parse

        def decorator(func):
            # what StrictParser and werkzeug answer for a body they cannot take
            for status, name in (
                (400, "BAD_REQUEST"),
                (413, "REQUEST_ENTITY_TOO_LARGE"),
                (415, "UNSUPPORTED_MEDIA_TYPE"),
            ):
                func = self.alt_response(status, response=name)(func)
            return parse(func)

        return decorator

    def login_required(self, *, refresh: bool = False, fresh: bool = False):
        """jwt_required(), documented: the token it takes (access or refresh, each its own
        security scheme, so Swagger UI sends the right one) and the 401 it may answer (with
        `fresh`, also for an access token not straight from a login)."""

        def decorator(func):
            guarded = jwt_required(refresh=refresh, fresh=fresh)(func)
            guarded = self.alt_response(401, response="UNAUTHORIZED")(guarded)
            return self.doc(security=[{REFRESH if refresh else BEARER: []}])(guarded)

        return decorator

    def rate_limit(self, setting: str, *, key: Callable[[], str], scope: str, **options):
        """Declares a rate limit on this route and documents its 429. The limit is attached
        by app/limits.py with the app's own Limiter: a Limiter binds its storage and
        settings to one app, so a module-level one cannot serve every app `create_app`
        makes. (functools.wraps carries the declaration out through every decorator.)"""

        def decorator(func):
            func.rate_limits = [*getattr(func, "rate_limits", ()), RateLimit(setting, key, scope, options)]
            return self.alt_response(429, response="TOO_MANY_REQUESTS")(func)

        return decorator

    def starts_job(self, schema):
        """The view returns the job it started; the answer is 202 with the job and its
        Location to poll, as for every endpoint that starts a job."""

        def decorator(func):
            @functools.wraps(func)
            def accepted(*args, **kwargs):
                job = func(*args, **kwargs)
                return job, 202, {"Location": url_for("jobs.get_job", job_id=job.id)}

            return self.response(202, schema, headers=JOB_LOCATION)(accepted)

        return decorator


# statuses gunicorn answers itself, in HTML, before a request reaches the app (its
# limit_request_line, limit_request_fields and limit_request_field_size settings)
SERVER_ANSWERS = {
    414: "The request line (method, path and query string) is longer than gunicorn takes "
    "(4094 bytes by default). gunicorn answers this itself, as text/html, before the app runs.",
    431: "A header field is longer than gunicorn takes (8190 bytes by default), or there are "
    "more than 100 header fields. gunicorn answers this itself, as text/html, before the app runs.",
}


def register_problem_responses(api) -> None:
    """Document every error status as problem+json (flask-smorest says application/json),
    but those gunicorn answers, which are HTML."""
    for status in http.HTTPStatus:
        if status in SERVER_ANSWERS:
            response = {"description": SERVER_ANSWERS[status], "content": {"text/html": {"schema": {"type": "string"}}}}
            api.spec.components.response(status.name, response, lazy=True)
        elif status >= 400:
            response = {"description": status.phrase, "schema": ProblemSchema}
            prepare_response(response, api.spec, PROBLEM_JSON)
            api.spec.components.response(status.name, response, lazy=True)
    response = {"description": "Default error response", "schema": ProblemSchema}
    prepare_response(response, api.spec, PROBLEM_JSON)
    api.spec.components.response("DEFAULT_ERROR", response, lazy=True)


class ProblemApi(Api):
    """flask-smorest's Api, with every HTTP error answered and documented as problem+json.

    No catch-all `default` response: each operation lists the statuses it can return.
    """

    DEFAULT_ERROR_RESPONSE_NAME = None

    def handle_http_exception(self, error):
        return problem_from_http_exception(error)

    # Private override: flask-smorest 0.47.0 (pinned exactly in setup.cfg). Api._init_spec
    # calls _register_responses() once to register, lazily, a response component per
    # HTTP status (named by HTTPStatus.name, which alt_response, arguments, etag and
    # pagination refer to) in DEFAULT_RESPONSE_CONTENT_TYPE. flask-smorest has no public
    # setting for the content type of error responses alone, and its maintainer points
    # to overriding this method for it (marshmallow-code/flask-smorest#223). Guarded by
    # tests/api/test_library_overrides.py.
    def _register_responses(self):
        register_problem_responses(self)


def init_api(app) -> ProblemApi:
    """The app's Api (one per app: flask-smorest keeps the OpenAPI document on it), with
    the `<id:...>` converter, the security schemes, the operation conventions and the
    Swagger UI assets; blueprints come next."""
    app.config.setdefault("OPENAPI_SWAGGER_UI_CONFIG", SWAGGER_UI_CONFIG)
    api = ProblemApi(app, spec_kwargs={"extra_plugins": [OperationConventions()]})
    register_id_converter(app, api)
    for name, scheme in SECURITY_SCHEMES.items():
        api.spec.components.security_scheme(name, scheme)
    app.register_blueprint(swagger_ui_assets())
    return api


def expected_versions(if_match: str | None) -> frozenset[int] | None:
    """The versions an If-Match header value accepts, for the services' check: None when it
    sets no precondition (absent, or `*`); an empty set when it names no version of ours
    (malformed, weak or foreign tags), so such a header fails the check instead of passing it."""
    if if_match is None:
        return None
    etags = parse_etags(if_match)
    if etags.star_tag:
        return None
    return frozenset(int(tag[1:]) for tag in etags.as_set() if tag[1:].isdecimal() and etag_of(int(tag[1:])) == tag)
