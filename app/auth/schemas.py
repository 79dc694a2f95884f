"""Request and response bodies of /auth."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from app.api import StrictSchema

USERNAME = validate.And(
    validate.Length(min=3, max=30),
    validate.Regexp(r"^[A-Za-z0-9_]+$", error="Use letters, digits and underscores only."),
)
PASSWORD = validate.Length(min=10, max=128)


class RegisterSchema(StrictSchema):
    username = ma.fields.String(required=True, validate=USERNAME)
    email = ma.fields.Email(required=True, validate=validate.Length(max=254))
    password = ma.fields.String(required=True, load_only=True, validate=PASSWORD)


class LoginSchema(StrictSchema):
    login = ma.fields.String(
        required=True, validate=validate.Length(min=1, max=254), metadata={"description": "username or email"}
    )
    password = ma.fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=128))


class TokenPairSchema(ma.Schema):
    access_token = ma.fields.String(required=True)
    refresh_token = ma.fields.String(required=True)
    token_type = ma.fields.String(required=True, metadata={"example": "Bearer"})
    expires_in = ma.fields.Integer(required=True, metadata={"description": "access token lifetime, seconds"})
