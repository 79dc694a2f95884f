"""Request and response bodies of /posts and /feed."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from app.schemas import PageArgsSchema, StrictSchema
from app.users.schemas import UserSummarySchema

TITLE = validate.Length(min=1, max=200)
BODY = validate.Length(min=1, max=20000)


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ma.ValidationError("Must not be blank.")


class PostSchema(ma.Schema):
    id = ma.fields.Integer(required=True, metadata={"example": 42})
    title = ma.fields.String(required=True, metadata={"example": "Hello"})
    body = ma.fields.String(required=True, metadata={"example": "My first post."})
    author = ma.fields.Nested(UserSummarySchema, required=True)
    created_at = ma.fields.DateTime(required=True, metadata={"example": "2026-01-02T03:04:05+00:00"})
    updated_at = ma.fields.DateTime(required=True, metadata={"example": "2026-01-02T03:04:05+00:00"})


class PostCreateSchema(StrictSchema):
    title = ma.fields.String(required=True, validate=[TITLE, _not_blank], metadata={"example": "Hello"})
    body = ma.fields.String(required=True, validate=[BODY, _not_blank], metadata={"example": "My first post."})


class PostUpdateSchema(StrictSchema):
    title = ma.fields.String(validate=[TITLE, _not_blank])
    body = ma.fields.String(validate=[BODY, _not_blank])

    @ma.validates_schema
    def _something_to_change(self, data: dict, **_kwargs) -> None:
        if not data:
            raise ma.ValidationError("Send at least one of title, body.", "_schema")


class PostListArgsSchema(PageArgsSchema):
    author = ma.fields.Integer(validate=validate.Range(min=1, max=2**63 - 1), metadata={"description": "author id"})
    q = ma.fields.String(validate=validate.Length(min=1, max=200), metadata={"description": "full-text search"})
