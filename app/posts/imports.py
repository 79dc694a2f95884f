"""Bulk import of posts from JSON Lines or CSV, run as a job.

Valid lines go in with one INSERT per batch of 5,000 (three arrays unnested server-side),
skipping (author, external_id) pairs that exist: running the same file twice, or
resuming a job after a crash, creates no duplicate. Each batch commits together with the
job's progress and its error report, so a resumed job starts after the last batch.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import marshmallow as ma
from flask import current_app
from marshmallow import validate
from sqlalchemy import text

from app import cache
from app.api import StrictSchema
from app.db import db
from app.errors import ValidationFailed
from app.models import JobFile
from app.posts.schemas import BODY, TITLE, _not_blank
from app.posts.service import posts_changed
from app.users.service import bump_counters

BATCH = 5000  # lines per INSERT and per commit: each commit costs an fsync
MAX_REPORTED_ERRORS = 1000
FORMATS = {"jsonl": "application/x-ndjson", "csv": "text/csv"}
CSV_COLUMNS = ["external_id", "title", "body"]

_INSERT = text("""
WITH inserted AS (
    INSERT INTO posts (author_id, external_id, title, body)
    SELECT :author_id, e, t, b
    FROM unnest(CAST(:external_ids AS text[]), CAST(:titles AS text[]), CAST(:bodies AS text[])) AS u(e, t, b)
    ON CONFLICT (author_id, external_id) WHERE external_id IS NOT NULL DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM inserted
""")


EXTERNAL_ID = validate.Length(min=1, max=100)


class ImportLineSchema(StrictSchema):
    external_id = ma.fields.String(required=True, validate=[EXTERNAL_ID, _not_blank])
    title = ma.fields.String(required=True, validate=[TITLE, _not_blank])
    body = ma.fields.String(required=True, validate=[BODY, _not_blank])


_LIMITS = {"external_id": EXTERNAL_ID.max, "title": TITLE.max, "body": BODY.max}


def plainly_valid(record) -> bool:
    """A quick yes for the common line that ImportLineSchema would accept as it is.

    Marshmallow costs ~20 us a line, as much as the INSERT itself; lines this says no
    to go through the schema, which decides and words the error.
    """
    if type(record) is not dict or record.keys() != _LIMITS.keys():
        return False
    for name, limit in _LIMITS.items():
        value = record[name]
        if type(value) is not str or not 0 < len(value) <= limit or not value.strip() or "\x00" in value:
            return False
    return True


def detect_format(filename: str, content_type: str, declared: str | None) -> str:
    if declared:
        return declared
    name = (filename or "").lower()
    if name.endswith((".jsonl", ".ndjson")) or "ndjson" in content_type or "jsonl" in content_type:
        return "jsonl"
    if name.endswith(".csv") or "csv" in content_type:
        return "csv"
    raise ValidationFailed(
        "Cannot tell the file's format.", errors={"format": ["Name the file .jsonl or .csv, or send format."]}
    )


def check_upload(content: bytes, fmt: str) -> int:
    """Refuse an upload that cannot be imported at all; return its number of lines."""
    try:
        decoded = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationFailed("The file is not UTF-8 text.", errors={"file": ["Not UTF-8."]}) from None
    lines = _count_lines(decoded, fmt)
    limit = current_app.config["IMPORT_MAX_LINES"]
    if lines > limit:
        raise ValidationFailed(
            f"The file has {lines} lines; at most {limit} are accepted.", errors={"file": [f"More than {limit} lines."]}
        )
    if lines == 0:
        raise ValidationFailed("The file has no lines to import.", errors={"file": ["Empty."]})
    return lines


def _count_lines(decoded: str, fmt: str) -> int:
    lines = sum(1 for line in decoded.splitlines() if line.strip())
    return max(lines - 1, 0) if fmt == "csv" else lines  # the CSV header is not a post


def _parsed(decoded: str, fmt: str) -> Iterator[tuple[int, dict | str]]:
    """(line number, fields) for each record, or (line number, why it cannot be read)."""
    if fmt == "jsonl":
        for number, line in enumerate(decoded.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                yield number, f"Not JSON: {exc.msg}."
                continue
            yield number, record if isinstance(record, dict) else "Not a JSON object."
        return
    reader = csv.DictReader(io.StringIO(decoded, newline=""))
    if reader.fieldnames != CSV_COLUMNS:
        yield 1, f"The header must be {','.join(CSV_COLUMNS)}."
        return
    for record in reader:
        if None in record:
            yield reader.line_num, "More fields than the header names."
        else:
            yield reader.line_num, record


def start(
    author_id: int, content: bytes, filename: str, content_type: str, declared_format: str | None, *, queue: bool = True
):
    """Check a file and record its import as a job (queued for a worker); returns it."""
    from app.jobs import service as jobs
    from app.models import JobKind

    fmt = detect_format(filename, content_type, declared_format)
    check_upload(content, fmt)
    return jobs.create(
        JobKind.IMPORT_POSTS,
        author_id,
        params={"format": fmt, "filename": filename[:255]},
        upload={"content": content, "content_type": FORMATS[fmt], "filename": filename[:255]},
        queue=queue,
    )


def run_import(tracker) -> None:
    job = tracker.job
    author_id = job.owner_id
    upload = db.session.get(JobFile, (job.id, "input"))
    decoded = upload.content.decode("utf-8")
    fmt = job.params["format"]
    total = _count_lines(decoded, fmt)
    state = tracker.state
    for name in ("imported", "duplicates", "invalid"):
        state.setdefault(name, 0)
    state.setdefault("errors", [])
    resume_after = job.progress_done  # records already committed by an earlier attempt
    schema = ImportLineSchema()
    batch: list[dict] = []
    seen = 0
    for number, record in _parsed(decoded, fmt):
        seen += 1
        if seen <= resume_after:
            continue
        if isinstance(record, str):
            _report(state, number, {"_line": [record]})
        elif plainly_valid(record):
            batch.append(record)
        elif errors := schema.validate(record):
            _report(state, number, errors)
        else:
            batch.append(record)
        if seen % BATCH == 0:
            _write(author_id, batch, state)
            batch = []
            tracker.checkpoint(seen, total)
            posts_changed(author_id)  # this batch is committed: list it
    _write(author_id, batch, state)
    db.session.delete(upload)  # imported: the upload is no longer needed
    tracker.checkpoint(max(seen, total), max(seen, total))
    posts_changed(author_id, cache.profile_key(author_id))


def _report(state: dict, number: int, errors: dict) -> None:
    state["invalid"] += 1
    if len(state["errors"]) < MAX_REPORTED_ERRORS:
        state["errors"].append({"line": number, "errors": errors})


def _write(author_id: int, rows: list[dict], state: dict) -> None:
    if not rows:
        return
    inserted = db.session.execute(
        _INSERT,
        {
            "author_id": author_id,
            "external_ids": [r["external_id"] for r in rows],
            "titles": [r["title"] for r in rows],
            "bodies": [r["body"] for r in rows],
        },
    ).scalar_one()
    if inserted:
        bump_counters(author_id, post_count=inserted)
    state["imported"] += inserted
    state["duplicates"] += len(rows) - inserted
