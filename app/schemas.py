"""What every schema builds on: strict input (no unknown fields, no text PostgreSQL
cannot store), the problem body, and the page arguments and envelope."""

from __future__ import annotations

import marshmallow as ma

from app.pagination import PAGE_MAX

NUL_MESSAGE = "Must not contain NUL characters."
SURROGATE_MESSAGE = "Must not contain lone surrogates (\\ud800-\\udfff are not Unicode characters)."


def text_problem(text: str) -> str | None:
    """Why PostgreSQL cannot store this text (and UTF-8 cannot encode it), or None.

    A lone surrogate ("\\ud800" in JSON) is a str to Python but no character: the
    driver, argon2 and the logs fail to encode it.
    """
    if "\x00" in text:
        return NUL_MESSAGE
    if not text.isascii():  # CPython knows this without a scan
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return SURROGATE_MESSAGE
    return None


def _printable(key: str) -> str:
    """A field name as the client wrote it in JSON (\\ud800), fit for the error body."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def text_errors(data) -> dict:
    """Marshmallow-style errors ({field: {inner: [message]}}) for each string in `data`,
    value or key at any depth, that text_problem refuses; {} when there is none.

    A loop over a stack, not recursion: a body nested nearly as deep as the JSON parser
    allows must not raise RecursionError here.
    """
    errors: dict = {}
    stack = [((), data)]
    while stack:
        path, value = stack.pop()
        items = value.items() if hasattr(value, "items") else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and (problem := text_problem(key)):
                where, message = (*path, _printable(key)), problem
            elif isinstance(item, str) and (problem := text_problem(item)):
                where, message = (*path, key), problem
            else:
                if isinstance(item, dict | list):
                    stack.append(((*path, key), item))
                continue
            node = errors
            for step in where[:-1]:
                node = node.setdefault(step, {})
            node[where[-1]] = [message]
    return errors


class StrictSchema(ma.Schema):
    """Base of every input schema: unknown fields are an error (no mass assignment), and
    no string, value or field name at any depth, may hold a NUL character (PostgreSQL
    text cannot store one) or a lone surrogate (a 422 naming the field, before any
    field is read)."""

    class Meta:
        unknown = ma.RAISE

    @ma.pre_load(pass_collection=True)
    def _refuse_unstorable_text(self, data, **_kwargs):
        if isinstance(data, dict | list) or hasattr(data, "items"):
            errors = text_errors(data)
            if errors:
                raise ma.ValidationError(errors)
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
    errors = ma.fields.Dict(
        keys=ma.fields.String(),
        metadata={
            "description": "For each field: its messages, or (for a nested field) an object of the same shape.",
            "additionalProperties": {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "object"}]},
            "example": {"title": ["Shorter than minimum length 1."]},
        },
    )


class PageArgsSchema(StrictSchema):
    """A list's query arguments. Its loads (and its subclasses') depend on the query
    string alone, no setting or request state: app/api.py remembers them."""

    limit = ma.fields.Integer(
        load_default=20,
        validate=ma.validate.Range(min=1, max=PAGE_MAX),
        metadata={"description": "Items on this page."},
    )
    cursor = ma.fields.String(
        validate=ma.validate.Length(min=1, max=512),
        metadata={"description": "The next_cursor of the page before; absent for the first page."},
    )


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
