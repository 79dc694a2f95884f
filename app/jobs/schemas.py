"""Bodies of /jobs and of the endpoints that start jobs."""

from __future__ import annotations

import marshmallow as ma
from flask_smorest.fields import Upload
from marshmallow import validate

from app.schemas import StrictSchema


class JobSchema(ma.Schema):
    id = ma.fields.UUID(required=True)
    kind = ma.fields.String(required=True)
    status = ma.fields.String(required=True, metadata={"description": "queued, running, succeeded or failed"})
    progress_done = ma.fields.Integer(required=True)
    progress_total = ma.fields.Integer(allow_none=True, required=True)
    result = ma.fields.Dict(allow_none=True, required=True)
    error = ma.fields.Dict(allow_none=True, required=True)
    created_at = ma.fields.DateTime(required=True)
    started_at = ma.fields.DateTime(allow_none=True, required=True)
    finished_at = ma.fields.DateTime(allow_none=True, required=True)


class ImportFileSchema(StrictSchema):
    file = Upload(required=True, metadata={"description": "JSON Lines or CSV (external_id,title,body)"})


class ImportFormSchema(StrictSchema):
    format = ma.fields.String(validate=validate.OneOf(["jsonl", "csv"]))
