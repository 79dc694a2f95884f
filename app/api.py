"""HTTP plumbing every blueprint shares: the blueprint class, the problem and page
schemas, auth documentation and ETag preconditions."""

from __future__ import annotations

import http

import marshmallow as ma
from flask_jwt_extended import jwt_required
from flask_smorest import Blueprint
from flask_smorest.utils import prepare_response
from webargs.flaskparser import FlaskParser
from werkzeug.datastructures import ETags
from werkzeug.routing import IntegerConverter

from app.errors import PROBLEM_JSON, PreconditionFailed
from app.pagination import PAGE_MAX

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


class StrictParser(FlaskParser):
    """Let each schema decide on unknown fields (ours raise), in every location.

    webargs excludes unknown query-string fields by default; a typo in `?limt=` should
    be a 422 naming the field, not silently ignored.
    """

    DEFAULT_UNKNOWN_BY_LOCATION = {location: None for location in FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION}


class ApiBlueprint(Blueprint):
    """flask-smorest's Blueprint, documenting the errors every operation may answer."""

    ARGUMENTS_PARSER = StrictParser()

    def __init__(self, *args, uses_database: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.uses_database = uses_database

    def route(self, rule, *, parameters=None, **options):
        register = super().route(rule, parameters=parameters, **options)
        if not self.uses_database:
            return register

        def decorator(func):
            # any view that touches PostgreSQL may find it down or its pool exhausted
            return register(self.alt_response(503, response="SERVICE_UNAVAILABLE")(func))

        return decorator

    def arguments(self, schema, *, location="json", **kwargs):
        # one instance per route: webargs would build one (deep-copying every field) per
        # request from a class; loading does not change a marshmallow 4 schema
        if isinstance(schema, type):
            schema = schema()
        parse = super().arguments(schema, location=location, **kwargs)
        if location != "json":
            return parse

        def decorator(func):
            for status, name in (
                (400, "BAD_REQUEST"),
                (413, "REQUEST_ENTITY_TOO_LARGE"),
                (415, "UNSUPPORTED_MEDIA_TYPE"),
            ):
                func = self.alt_response(status, response=name)(func)
            return parse(func)

        return decorator

    def login_required(self, *, refresh: bool = False):
        """jwt_required(), documented: bearer security and the 401 it may answer."""

        def decorator(func):
            guarded = jwt_required(refresh=refresh)(func)
            guarded = self.alt_response(401, response="UNAUTHORIZED")(guarded)
            return self.doc(security=[{"bearerAuth": []}])(guarded)

        return decorator


class StrictSchema(ma.Schema):
    """Base of every input schema: unknown fields are an error (no mass assignment), and
    no string may hold a NUL character (PostgreSQL text cannot store one)."""

    class Meta:
        unknown = ma.RAISE

    @ma.pre_load
    def _refuse_nul(self, data, **_kwargs):
        if hasattr(data, "items"):
            bad = {
                key: ["Must not contain NUL characters."]
                for key, value in data.items()
                if isinstance(value, str) and "\x00" in value
            }
            if bad:
                raise ma.ValidationError(bad)
        return data


class StrictBoolean(ma.fields.Boolean):
    """JSON true or false only: not "yes", not 1."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class ProblemSchema(ma.Schema):
    """RFC 9457 problem details."""

    type = ma.fields.String(required=True)
    title = ma.fields.String(required=True)
    status = ma.fields.Integer(required=True)
    detail = ma.fields.String()
    instance = ma.fields.String(allow_none=True)
    request_id = ma.fields.String(allow_none=True)
    errors = ma.fields.Raw(metadata={"description": "field name -> list of messages"})


class PageArgsSchema(StrictSchema):
    limit = ma.fields.Integer(load_default=20, validate=ma.validate.Range(min=1, max=PAGE_MAX))
    cursor = ma.fields.String(validate=ma.validate.Length(min=1, max=512))


_page_schemas: dict[str, type[ma.Schema]] = {}


def page_of(item_schema: type[ma.Schema]) -> type[ma.Schema]:
    """The `{items, next_cursor}` schema for one item schema (one class per item kind)."""
    name = item_schema.__name__.removesuffix("Schema") + "PageSchema"
    if name not in _page_schemas:
        _page_schemas[name] = type(
            name,
            (ma.Schema,),
            {
                "items": ma.fields.List(ma.fields.Nested(item_schema), required=True),
                "next_cursor": ma.fields.String(allow_none=True, required=True),
            },
        )
    return _page_schemas[name]


def register_problem_responses(api) -> None:
    """Document every error status as problem+json (flask-smorest says application/json)."""
    for status in http.HTTPStatus:
        if status >= 400:
            response = {"description": status.phrase, "schema": ProblemSchema}
            prepare_response(response, api.spec, PROBLEM_JSON)
            api.spec.components.response(status.name, response, lazy=True)
    response = {"description": "Default error response", "schema": ProblemSchema}
    prepare_response(response, api.spec, PROBLEM_JSON)
    api.spec.components.response("DEFAULT_ERROR", response, lazy=True)


class WithExtras:
    """An entity plus attributes computed for one response; the entity stays untouched
    (it may sit in the session's identity map, shared with other code)."""

    def __init__(self, entity, **extras):
        self._entity = entity
        self.__dict__.update(extras)

    def __getattr__(self, name: str):
        return getattr(self._entity, name)


def etag_of(version: int) -> str:
    """The entity tag of an editable resource: its version, bumped on every change."""
    return f"v{version}"


def check_if_match(if_match: ETags | None, version: int) -> None:
    """412 when the client's If-Match names another version (absent header: no check)."""
    if if_match and not if_match.contains(etag_of(version)):
        raise PreconditionFailed(
            "The resource changed since you read it; fetch it again and retry.",
            errors={"If-Match": [f'current ETag is "{etag_of(version)}"']},
        )
