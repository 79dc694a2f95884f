"""StrictSchema, the base of every input schema, refuses NUL characters and lone
surrogates in any string or key at any depth, naming the field (what the requests of
tests/api/test_hostile_input.py meet through the app)."""

from __future__ import annotations

import marshmallow as ma
import pytest

from app.schemas import StrictSchema, text_errors


class _Inner(StrictSchema):
    name = ma.fields.String()
    tags = ma.fields.List(ma.fields.String())


class _Outer(StrictSchema):
    title = ma.fields.String()
    inner = ma.fields.Nested(_Inner)
    items = ma.fields.List(ma.fields.Nested(_Inner))
    extra = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Raw())


@pytest.mark.parametrize(
    ("data", "path", "says"),
    [
        ({"inner": {"name": "a\ud800"}}, ("inner", "name"), "surrogate"),
        ({"inner": {"tags": ["ok", "\udc00"]}}, ("inner", "tags", 1), "surrogate"),
        ({"items": [{"name": "ok"}, {"tags": ["\x00"]}]}, ("items", 1, "tags", 0), "NUL"),
        ({"extra": {"deep": {"\ud800key": 1}}}, ("extra", "deep", "\\ud800key"), "surrogate"),
        ({"extra": {"a\x00": 1}}, ("extra", "a\x00"), "NUL"),
    ],
)
def test_strict_schema_names_the_field_at_any_depth(data, path, says):
    with pytest.raises(ma.ValidationError) as caught:
        _Outer().load(data)
    where = caught.value.messages
    for step in path:
        where = where[step]
    assert says in where[0]


def test_strict_schema_passes_clean_nested_data_and_valid_pairs():
    data = {"title": "caf\u00e9 \U0001f600", "inner": {"name": "n", "tags": ["a"]}, "extra": {"k": [{"x": "y"}]}}
    assert _Outer().load(data) == data


def test_the_scan_is_a_loop_so_depth_cannot_overflow_it():
    deep: list = ["\ud800"]
    for _ in range(10_000):  # far past the recursion limit
        deep = [deep]
    errors = text_errors({"a": deep})
    where = errors["a"]
    for _ in range(10_000):
        where = where[0]
    assert "surrogate" in where[0][0]
