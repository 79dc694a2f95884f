"""Bulk import of posts from JSON Lines or CSV, run as a job.

The upload goes to PostgreSQL chunk by chunk (app.jobs.files): the web request checks on
the way that it is UTF-8 and counts its lines, so those refusals are still its 422s,
and the worker reads it back chunk by chunk, line by line. Neither holds the file whole.

Valid lines go in with one INSERT per batch (three arrays unnested server-side),
skipping (author, external_id) pairs that exist: running the same file twice, or
resuming a job after a crash, creates no duplicate. Each batch commits together with the
job's progress and its report, so a resumed job starts after the last batch. A line
that cannot be read or is invalid is reported by number with a plain reason (never its
content) and skipped; the report lists the first ones and counts the rest.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import marshmallow as ma
from flask import current_app
from marshmallow import validate
from sqlalchemy import text

from app import cache
from app.db import db
from app.errors import TooManyRequests, ValidationFailed
from app.jobs import files
from app.jobs import service as jobs
from app.jobs.service import JobFailed
from app.models import JobKind
from app.posts.schemas import BODY, TITLE, _not_blank
from app.posts.service import posts_changed
from app.schemas import StrictSchema, text_problem
from app.users.service import bump_counters

BATCH = 5000  # lines per INSERT and per commit: each commit costs an fsync
BATCH_CHARS = 4 * 1024 * 1024  # ... or fewer, when their text adds up to this much
MAX_LINE_BYTES = 1024 * 1024  # well above the longest valid line (a 20,000-character body, escaped)
MAX_REPORTED_ERRORS = 100  # the report lists the first lines in error and counts the rest
REPORT_BUDGET = 32 * 1024  # ... and stops listing once they take this much JSON
FIELD_NAME_MAX = 40  # an unknown field's name is cut to this in the report
UNKNOWN_LISTED = 3  # unknown fields named per line; the others are counted
FORMATS = {"jsonl": "application/x-ndjson", "csv": "text/csv"}
CSV_COLUMNS = ["external_id", "title", "body"]

_INSERT = text("""
WITH inserted AS (
    INSERT INTO posts (author_id, external_id, title, body)
    SELECT :author_id, external_id, title, body
    FROM json_to_recordset(CAST(:rows AS json)) AS r(external_id text, title text, body text)
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

    Loading a line through marshmallow costs as much as inserting it; lines this says
    no to go through the schema, which decides and words the error.
    """
    if type(record) is not dict or record.keys() != _LIMITS.keys():
        return False
    for name, limit in _LIMITS.items():
        value = record[name]
        if type(value) is not str or not 0 < len(value) <= limit or not value.strip() or text_problem(value):
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


# -- in the web request: refuse what cannot be imported, store the rest ----------------


def before_upload(author_id: int) -> None:
    """What an upload is refused for before its body is read (see refuse_unless_room).
    Then the transaction ends: no database connection waits while a slow client sends."""
    refuse_unless_room(author_id)
    db.session.commit()


def refuse_unless_room(author_id: int, *, lock: bool = False, besides=None) -> None:
    """429 when the author already has IMPORT_MAX_UNFINISHED_PER_USER imports queued or
    running: each holds a file in the database and a worker's time. Checked before the
    upload is read, and again, under a lock, before its job is committed."""
    waiting = jobs.unfinished(author_id, JobKind.IMPORT_POSTS, lock=lock, besides=besides)
    limit = current_app.config["IMPORT_MAX_UNFINISHED_PER_USER"]
    if len(waiting) >= limit:
        raise TooManyRequests(
            f"You have {len(waiting)} imports queued or running, the most allowed at once; "
            "send this file when one of them has finished.",
            headers={"Retry-After": str(current_app.config["RETRY_AFTER_SECONDS"])},
            extra={"jobs": [str(job_id) for job_id in waiting]},
        )


def start(
    author_id: int,
    upload: BinaryIO,
    filename: str,
    content_type: str,
    declared_format: str | None,
    *,
    queue: bool = True,
):
    """Check a file while storing it chunk by chunk, and record its import as a job
    (queued for a worker); returns it. Nothing is kept when the file is refused."""
    fmt = detect_format(filename, content_type, declared_format)
    try:
        job = jobs.new(JobKind.IMPORT_POSTS, author_id, params={"format": fmt, "filename": filename[:255]})
        out = files.FileWriter(job.id, "input", FORMATS[fmt], filename)
        check = UploadCheck(fmt, current_app.config["IMPORT_MAX_LINES"])
        while chunk := upload.read(files.CHUNK_BYTES):
            check.feed(chunk)
            out.write(chunk)
        job.progress_total = check.finish()
        out.close()
        refuse_unless_room(author_id, lock=True, besides=job.id)
    except BaseException:
        db.session.rollback()
        raise
    return jobs.submit(job, queue=queue)


_CONTENT = re.compile(rb"\S")  # bytes: anything but ASCII whitespace
# a line holding nothing but whitespace, found by the newline before it (a literal first:
# the regex engine skips from newline to newline)
_BLANK_AFTER_NEWLINE = re.compile(rb"\n[ \t\r\f\v]*(?=\n)")


def blank(line: bytes) -> bool:
    """A line the import skips (and does not count): ASCII whitespace only."""
    return _CONTENT.search(line) is None


class UploadCheck:
    """Reads an upload as it is stored: refuses it (422) as soon as it is not UTF-8 or
    has too many lines, and counts its lines (those that are not blank), chunk by chunk."""

    def __init__(self, fmt: str, max_lines: int):
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._header = 1 if fmt == "csv" else 0  # the CSV header is not a post
        self._max_lines = max_lines
        self._lines = 0
        self._open_line_counts = False  # the unfinished last line has content

    def feed(self, chunk: bytes) -> None:
        # ASCII is UTF-8 as it is, unless a character cut at the last chunk's end waits
        if not (chunk.isascii() and not self._decoder.getstate()[0]):
            try:
                self._decoder.decode(chunk)
            except UnicodeDecodeError:
                raise ValidationFailed("The file is not UTF-8 text.", errors={"file": ["Not UTF-8."]}) from None
        first = chunk.find(b"\n")
        if first < 0:
            self._open_line_counts = self._open_line_counts or _CONTENT.search(chunk) is not None
            return
        if self._open_line_counts or _CONTENT.search(chunk, 0, first):
            self._lines += 1
        last = chunk.rfind(b"\n")
        # the lines between the first newline and the last, less the blank ones
        between = chunk.count(b"\n", first, last + 1) - 1
        self._lines += between - len(_BLANK_AFTER_NEWLINE.findall(chunk, first, last + 1))
        self._open_line_counts = _CONTENT.search(chunk, last + 1) is not None
        self._check_count()

    def finish(self) -> int:
        """The number of lines to import, once the whole file has been fed."""
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValidationFailed("The file is not UTF-8 text.", errors={"file": ["Not UTF-8."]}) from None
        self._lines += self._open_line_counts
        self._open_line_counts = False
        self._check_count()
        records = max(self._lines - self._header, 0)
        if records == 0:
            raise ValidationFailed("The file has no lines to import.", errors={"file": ["Empty."]})
        return records

    def _check_count(self) -> None:
        limit = self._max_lines
        if self._lines - self._header > limit:
            raise ValidationFailed(
                f"The file has more than {limit} lines; at most {limit} are accepted.",
                errors={"file": [f"More than {limit} lines."]},
            )


# -- in the worker: read the stored file line by line --------------------------------


class BadLine(Exception):
    """A line that cannot be read at all; it is reported by number and skipped."""

    def __init__(self, number: int, reason: str):
        super().__init__(reason)
        self.number, self.reason = number, reason


class Lines:
    """The lines of a file that arrives in chunks, each with its b"\n", numbered from 1.

    A line longer than `limit` raises BadLine once and is skipped without ever being
    held: memory stays at about a chunk plus a line. An iterator class, not a generator,
    so that it goes on after raising (the csv module pulls lines through it).
    """

    def __init__(self, chunks: Iterable[bytes], limit: int = MAX_LINE_BYTES):
        self._chunks = iter(chunks)
        self._limit = limit
        self._buffer = b""
        self._start = 0
        self._skipping = False  # inside a line already known to be too long
        self.number = 0

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n", self._start)
            if end >= 0:
                line = self._buffer[self._start : end + 1]
                self._start = end + 1
                return self._counted(line)
            if len(self._buffer) - self._start > self._limit:
                self._skipping = True
                self._buffer, self._start = b"", 0
            chunk = next(self._chunks, None)
            if chunk is None:
                if self._start < len(self._buffer) or self._skipping:
                    line, self._buffer, self._start = self._buffer[self._start :], b"", 0
                    return self._counted(line)
                raise StopIteration
            self._buffer = self._buffer[self._start :] + chunk
            self._start = 0

    def _counted(self, line: bytes) -> bytes:
        self.number += 1
        if self._skipping or len(line) > self._limit:
            self._skipping = False
            raise BadLine(self.number, f"Longer than {self._limit} bytes.")
        return line


class _Decoded:
    """Lines as text for the csv module; one that is not UTF-8 raises BadLine."""

    def __init__(self, lines: Lines):
        self._lines = lines

    def __iter__(self) -> _Decoded:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            raise BadLine(self._lines.number, "Not UTF-8.") from None


def _parsed(chunks: Iterable[bytes], fmt: str) -> Iterator[tuple[int, dict | str]]:
    """(line number, fields) for each record, or (line number, why it cannot be read)."""
    lines = Lines(chunks)
    yield from (_json_records if fmt == "jsonl" else _csv_records)(lines)


def _json_records(lines: Lines) -> Iterator[tuple[int, dict | str]]:
    while True:
        try:
            raw = next(lines)
        except StopIteration:
            return
        except BadLine as bad:
            yield bad.number, bad.reason
            continue
        if blank(raw):
            continue
        yield lines.number, _json_record(raw)


def _json_record(raw: bytes) -> dict | str:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "Not UTF-8."
    except json.JSONDecodeError as exc:
        return f"Not JSON: {exc.msg} (column {exc.colno})."  # the json module's fixed wording
    except RecursionError:
        return "Not JSON that can be read: nested too deeply."
    except ValueError:  # the one other refusal: an integer of more digits than Python converts
        return "Not JSON that can be read: a number with too many digits."
    return record if isinstance(record, dict) else "Not a JSON object."


def _csv_records(lines: Lines) -> Iterator[tuple[int, dict | str]]:
    reader = csv.reader(_Decoded(lines))
    try:
        header = next(reader)
    except (StopIteration, BadLine, csv.Error):
        header = None
    if header != CSV_COLUMNS:
        yield 1, f"The header must be {','.join(CSV_COLUMNS)}."
        return
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except BadLine as bad:
            yield bad.number, bad.reason
            continue
        except csv.Error as exc:
            yield lines.number, _csv_problem(exc)
            continue
        if not row:
            continue
        if len(row) > len(CSV_COLUMNS):
            yield lines.number, "More fields than the header names."
        else:
            yield lines.number, dict(zip(CSV_COLUMNS, row + [None] * (len(CSV_COLUMNS) - len(row)), strict=True))


def _csv_problem(exc: csv.Error) -> str:
    if "field larger than field limit" in str(exc):
        return f"A field is longer than {csv.field_size_limit()} characters."
    return "Not valid CSV."


def run_import(tracker) -> None:
    job = tracker.job
    author_id = job.owner_id
    total = job.progress_total
    if files.get(job.id, "input") is None:
        if total is not None and job.progress_done >= total:
            return  # an earlier attempt imported it all and dropped the upload, then died
        raise JobFailed("The uploaded file is no longer stored; upload it again.")
    state = tracker.state
    for name in ("imported", "duplicates", "invalid", "unlisted"):
        state.setdefault(name, 0)
    state.setdefault("errors", [])
    report = Report(state)
    resume_after = job.progress_done  # records already committed by an earlier attempt
    schema = ImportLineSchema()
    batch: list[dict] = []
    chars = 0
    seen = committed = 0
    for number, record in _parsed(files.chunks(job.id, "input"), job.params["format"]):
        seen += 1
        if seen <= resume_after:
            committed = seen
            continue
        if isinstance(record, str):
            report.add(number, {"_line": [record]})
        elif plainly_valid(record) or not (errors := schema.validate(record)):
            batch.append(record)
            chars += len(record["title"]) + len(record["body"])
        else:
            report.add(number, errors)
        if len(batch) >= BATCH or chars >= BATCH_CHARS or seen - committed >= BATCH:
            _write(author_id, batch, state)
            batch, chars, committed = [], 0, seen
            tracker.checkpoint(seen, total)
            posts_changed(author_id)  # this batch is committed: list it
    _write(author_id, batch, state)
    files.drop(job.id, "input")  # imported: the upload is no longer needed
    done = max(seen, total or 0)
    tracker.checkpoint(done, done)
    posts_changed(author_id, cache.profile_key(author_id))


class Report:
    """The lines in error, as the job shows them on every poll: the first ones (up to
    MAX_REPORTED_ERRORS and REPORT_BUDGET bytes), each with field names and short
    messages, never the line's content; `unlisted` counts the others."""

    def __init__(self, state: dict):
        self.state = state
        self._size = len(json.dumps(state["errors"]))

    def add(self, number: int, errors: dict) -> None:
        state = self.state
        state["invalid"] += 1
        if len(state["errors"]) < MAX_REPORTED_ERRORS and self._size < REPORT_BUDGET:
            entry = {"line": number, "errors": _plain(errors)}
            state["errors"].append(entry)
            self._size += len(json.dumps(entry)) + 2
        else:
            state["unlisted"] += 1


_FIELDS = {*CSV_COLUMNS, "_line", "_schema"}


def _plain(errors: dict) -> dict:
    """Marshmallow's errors for one line, bounded: a message per field, unknown field
    names cut short, and only the first few of them named."""
    plain, unknown = {}, 0
    # known fields first, then the unknown ones by name (marshmallow finds them in a set)
    for name, messages in sorted(errors.items(), key=lambda item: (item[0] not in _FIELDS, item[0])):
        first = messages[0] if isinstance(messages, list) and messages else messages
        message = first[:200] if isinstance(first, str) else "Invalid."
        if name in _FIELDS:
            plain[name] = [message]
            continue
        unknown += 1
        if unknown <= UNKNOWN_LISTED:
            cut = name if len(name) <= FIELD_NAME_MAX else name[: FIELD_NAME_MAX - 1] + "…"
            plain[cut] = [message]
    if unknown > UNKNOWN_LISTED:
        plain["_unknown"] = [f"{unknown - UNKNOWN_LISTED} more unknown fields."]
    return plain


def _write(author_id: int, rows: list[dict], state: dict) -> None:
    if not rows:
        return
    inserted = db.session.execute(
        _INSERT,
        {"author_id": author_id, "rows": json.dumps(rows, ensure_ascii=False)},
    ).scalar_one()
    if inserted:
        bump_counters(author_id, post_count=inserted)
    state["imported"] += inserted
    state["duplicates"] += len(rows) - inserted
