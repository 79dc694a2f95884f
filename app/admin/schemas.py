"""Bodies of /admin."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from app.models import Role
from app.schemas import PageArgsSchema, StrictBoolean, StrictSchema
from app.users.schemas import PrivateUserSchema


class AdminUserSchema(PrivateUserSchema):
    is_active = ma.fields.Boolean(required=True)
    updated_at = ma.fields.DateTime(required=True)


class AdminUserListArgsSchema(PageArgsSchema):
    q = ma.fields.String(
        validate=validate.Length(min=1, max=254), metadata={"description": "prefix of username or email"}
    )


class AdminUserUpdateSchema(StrictSchema):
    role = ma.fields.String(validate=validate.OneOf([r.value for r in Role]))
    is_active = StrictBoolean()

    @ma.validates_schema
    def _something_to_change(self, data: dict, **_kwargs) -> None:
        if not data:
            raise ma.ValidationError("Send at least one of role, is_active.", "_schema")
