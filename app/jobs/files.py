"""Job files (an import's upload, an export's document) stored as rows of CHUNK_BYTES.

Web processes share no disk, so an upload goes to PostgreSQL; written and read one
chunk at a time, a file of any size costs a process about one chunk of memory. The
statements here are Core, not ORM: the session's identity map would keep every chunk
until the commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from app.db import db
from app.models import Job, JobFile, JobFileChunk, JobKind, JobStatus

CHUNK_BYTES = 1024 * 1024
PURGE_BATCH = 100  # files per transaction: a purge never holds locks on all of them at once

_CHUNK = (
    select(JobFileChunk.data)
    .where(JobFileChunk.job_id == bindparam("job_id"), JobFileChunk.role == bindparam("role"))
    .where(JobFileChunk.seq == bindparam("seq"))
)


class FileWriter:
    """Writes a job's file in the caller's transaction, a chunk at a time.

    Opening it drops whatever an earlier attempt of the job wrote under the same role;
    close() writes the rest and records the size. Nothing is committed here.
    """

    def __init__(self, job_id: uuid.UUID, role: str, content_type: str, filename: str):
        self.job_id, self.role = job_id, role
        self.size = 0
        self._seq = 0
        self._buffer = bytearray()
        db.session.execute(delete(JobFileChunk).where(JobFileChunk.job_id == job_id, JobFileChunk.role == role))
        values = {"content_type": content_type, "filename": filename[:255], "size": 0, "purged_at": None}
        db.session.execute(
            insert(JobFile)
            .values(job_id=job_id, role=role, **values)
            .on_conflict_do_update(index_elements=[JobFile.job_id, JobFile.role], set_=values)
        )

    def write(self, data: bytes) -> None:
        self.size += len(data)
        rest = memoryview(data)
        if self._buffer:
            room = CHUNK_BYTES - len(self._buffer)
            self._buffer += rest[:room]
            rest = rest[room:]
            if len(self._buffer) < CHUNK_BYTES:
                return
            self._insert(bytes(self._buffer))
            self._buffer.clear()
        while len(rest) >= CHUNK_BYTES:
            self._insert(bytes(rest[:CHUNK_BYTES]))
            rest = rest[CHUNK_BYTES:]
        self._buffer += rest

    def close(self) -> None:
        if self._buffer:
            self._insert(bytes(self._buffer))
            self._buffer.clear()
        db.session.execute(
            update(JobFile).where(JobFile.job_id == self.job_id, JobFile.role == self.role).values(size=self.size)
        )

    def _insert(self, data: bytes) -> None:
        db.session.execute(insert(JobFileChunk).values(job_id=self.job_id, role=self.role, seq=self._seq, data=data))
        self._seq += 1


def chunks(job_id: uuid.UUID, role: str) -> Iterator[bytes]:
    """The file's bytes in order, one chunk per query (none held between them)."""
    seq = 0
    while True:
        data = db.session.execute(_CHUNK, {"job_id": job_id, "role": role, "seq": seq}).scalar()
        if data is None:
            return
        yield data
        seq += 1


def get(job_id: uuid.UUID, role: str) -> JobFile | None:
    return db.session.get(JobFile, (job_id, role))


def drop(job_id: uuid.UUID, role: str) -> None:
    """Delete a file and its chunks, in the caller's transaction."""
    db.session.execute(delete(JobFile).where(JobFile.job_id == job_id, JobFile.role == role))


# -- retention (celery beat) ----------------------------------------------------------


def purge_expired_results(now: datetime | None = None) -> int:
    """Drop the bytes of results older than JOB_RESULT_RETENTION_DAYS; their rows stay,
    so a download says 410 Gone rather than 404. Returns how many were purged."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=current_app.config["JOB_RESULT_RETENTION_DAYS"])
    expired = (
        select(JobFile.job_id)
        .join(Job, Job.id == JobFile.job_id)
        .where(JobFile.role == "result", JobFile.purged_at.is_(None), Job.finished_at < cutoff)
    )
    return _purge(expired, role="result", keep_row=True)


def purge_failed_uploads() -> int:
    """Drop the uploads of imports that failed: nothing will read them again."""
    failed = (
        select(JobFile.job_id)
        .join(Job, Job.id == JobFile.job_id)
        .where(JobFile.role == "input", Job.kind == JobKind.IMPORT_POSTS, Job.status == JobStatus.FAILED)
    )
    return _purge(failed, role="input", keep_row=False)


def drop_older_results(owner_id: int, kind: JobKind, newest: uuid.UUID) -> None:
    """Purge the results of the owner's earlier jobs of this kind (their downloads then
    answer 410), in the caller's transaction: one export per user is kept, the newest."""
    older = (
        select(JobFile.job_id)
        .join(Job, Job.id == JobFile.job_id)
        .where(Job.owner_id == owner_id, Job.kind == kind, Job.id != newest)
        .where(JobFile.role == "result", JobFile.purged_at.is_(None))
    )
    _purge_now(db.session.scalars(older.with_for_update(of=JobFile)).all(), role="result", keep_row=True)


def _purge(candidates, *, role: str, keep_row: bool) -> int:
    purged = 0
    while True:
        job_ids = db.session.scalars(candidates.limit(PURGE_BATCH).with_for_update(of=JobFile, skip_locked=True)).all()
        if not job_ids:
            return purged
        _purge_now(job_ids, role=role, keep_row=keep_row)
        db.session.commit()
        purged += len(job_ids)


def _purge_now(job_ids: list, *, role: str, keep_row: bool) -> None:
    if not job_ids:
        return
    db.session.execute(delete(JobFileChunk).where(JobFileChunk.job_id.in_(job_ids), JobFileChunk.role == role))
    files = (JobFile.job_id.in_(job_ids), JobFile.role == role)
    if keep_row:
        db.session.execute(update(JobFile).where(*files).values(purged_at=func.now()))
    else:
        db.session.execute(delete(JobFile).where(*files))
