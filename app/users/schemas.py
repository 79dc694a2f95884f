"""Request and response bodies of /users."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from app.schemas import PageArgsSchema, StrictSchema


class PostBriefSchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    title = ma.fields.String(required=True)
    created_at = ma.fields.DateTime(required=True)


class PublicUserSchema(ma.Schema):
    """What anyone may see of a user (and all a cache may ever hold)."""

    id = ma.fields.Integer(required=True, metadata={"example": 7})
    username = ma.fields.String(required=True, metadata={"example": "alice"})
    display_name = ma.fields.String(required=True, metadata={"example": "Alice"})
    bio = ma.fields.String(required=True, metadata={"example": "Writes about PostgreSQL."})
    created_at = ma.fields.DateTime(required=True, metadata={"example": "2026-01-02T03:04:05+00:00"})
    post_count = ma.fields.Integer(required=True)
    follower_count = ma.fields.Integer(required=True)
    following_count = ma.fields.Integer(required=True)


class UserListItemSchema(PublicUserSchema):
    posts = ma.fields.List(
        ma.fields.Nested(PostBriefSchema),
        attribute="recent_posts",
        metadata={"description": "the 5 newest posts; only with ?include=posts"},
    )


class PrivateUserSchema(PublicUserSchema):
    """The caller's own profile: adds what only they (and admins) may see."""

    email = ma.fields.String(required=True)
    email_verified = ma.fields.Boolean(required=True)
    role = ma.fields.String(required=True)


class UserSummarySchema(ma.Schema):
    """The author block embedded in posts."""

    id = ma.fields.Integer(required=True, metadata={"example": 7})
    username = ma.fields.String(required=True, metadata={"example": "alice"})
    display_name = ma.fields.String(required=True, metadata={"example": "Alice"})


class UserListArgsSchema(PageArgsSchema):
    q = ma.fields.String(
        validate=validate.Length(min=1, max=50), metadata={"description": "prefix of a username or display name"}
    )
    include = ma.fields.String(validate=validate.OneOf(["posts"]))


class ProfileUpdateSchema(StrictSchema):
    display_name = ma.fields.String(validate=validate.Length(min=1, max=50))
    bio = ma.fields.String(validate=validate.Length(max=500))
    email = ma.fields.Email(
        validate=validate.Length(max=254),
        metadata={
            "description": "needs a fresh access token (from a login); with mail on, replaces the old "
            "address once a mail to the new one is verified"
        },
    )

    @ma.validates("display_name")
    def _not_blank(self, value: str, **_kwargs) -> None:
        if not value.strip():
            raise ma.ValidationError("Must not be blank.")

    @ma.validates_schema
    def _something_to_change(self, data: dict, **_kwargs) -> None:
        if not data:
            raise ma.ValidationError("Send at least one of display_name, bio, email.", "_schema")
