"""Request and response bodies of /auth, and the password policy."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import marshmallow as ma
from marshmallow import validate

from app.schemas import StrictSchema

# lists, not validate.And: the OpenAPI document states each rule (minLength, pattern ...)
USERNAME = [
    validate.Length(min=3, max=30),
    validate.Regexp(r"^[A-Za-z0-9_]+$", error="Use letters, digits and underscores only."),
]


@cache
def common_passwords() -> frozenset[str]:
    """The 10,000 most common passwords (from Django's list, BSD licence), lower-cased."""
    text = files("app.auth").joinpath("common_passwords.txt").read_text(encoding="utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


def _not_common(value: str) -> None:
    if value.lower() in common_passwords():
        raise ma.ValidationError("This password is too common; choose another.")


PASSWORD = [validate.Length(min=10, max=128), _not_common]
EMAIL = validate.Length(max=254)
MAILED_TOKEN = validate.Length(min=1, max=100)
PASSWORD_RULES = "10 to 128 characters, not one of the 10,000 most common passwords."  # noqa: S105


class RegisterSchema(StrictSchema):
    username = ma.fields.String(
        required=True,
        validate=USERNAME,
        metadata={"description": "3 to 30 letters, digits or underscores; unique.", "example": "alice"},
    )
    email = ma.fields.Email(
        required=True,
        validate=EMAIL,
        metadata={"description": "Up to 254 characters; unique.", "example": "alice@example.com"},
    )
    password = ma.fields.String(
        required=True,
        load_only=True,
        validate=PASSWORD,
        metadata={"description": PASSWORD_RULES, "example": "correct-horse-battery"},
    )


class LoginSchema(StrictSchema):
    login = ma.fields.String(
        required=True,
        validate=validate.Length(min=1, max=254),
        metadata={"description": "username or email", "example": "alice"},
    )
    password = ma.fields.String(
        required=True,
        load_only=True,
        validate=validate.Length(min=1, max=128),
        metadata={"example": "correct-horse-battery"},
    )


class PasswordChangeSchema(StrictSchema):
    current_password = ma.fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=128))
    new_password = ma.fields.String(
        required=True, load_only=True, validate=PASSWORD, metadata={"description": PASSWORD_RULES}
    )


class PasswordResetRequestSchema(StrictSchema):
    email = ma.fields.Email(
        required=True,
        validate=EMAIL,
        metadata={"description": "The account's email address.", "example": "alice@example.com"},
    )


class PasswordResetConfirmSchema(StrictSchema):
    token = ma.fields.String(
        required=True, load_only=True, validate=MAILED_TOKEN, metadata={"description": "The token from the mail."}
    )
    new_password = ma.fields.String(
        required=True, load_only=True, validate=PASSWORD, metadata={"description": PASSWORD_RULES}
    )


class VerifyEmailSchema(StrictSchema):
    token = ma.fields.String(
        required=True, load_only=True, validate=MAILED_TOKEN, metadata={"description": "The token from the mail."}
    )


class AcceptedSchema(ma.Schema):
    detail = ma.fields.String(required=True)


class SessionSchema(ma.Schema):
    id = ma.fields.UUID(required=True)
    created_at = ma.fields.DateTime(required=True)
    last_used_at = ma.fields.DateTime(required=True)
    expires_at = ma.fields.DateTime(required=True)
    user_agent = ma.fields.String(required=True)
    ip = ma.fields.String(required=True)
    current = ma.fields.Boolean(required=True, metadata={"description": "the session of the token used"})


class TokenPairSchema(ma.Schema):
    access_token = ma.fields.String(
        required=True, metadata={"description": "send as `Authorization: Bearer ...`", "example": "eyJhbGciOi..."}
    )
    refresh_token = ma.fields.String(
        required=True, metadata={"description": "for POST /auth/refresh only; works once", "example": "eyJhbGciOi..."}
    )
    token_type = ma.fields.String(required=True, metadata={"example": "Bearer"})
    expires_in = ma.fields.Integer(
        required=True, metadata={"description": "access token lifetime, seconds", "example": 900}
    )
