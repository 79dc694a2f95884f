"""Long work as rows: a job's status and progress outlive any Celery result."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    LargeBinary,
    String,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import TZ, db


class JobKind(enum.StrEnum):
    IMPORT_POSTS = "import_posts"
    EXPORT_USER = "export_user"
    RECOUNT = "recount"
    DELETE_USER = "delete_user"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Job(db.Model):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, server_default=text("gen_random_uuid()"))
    kind: Mapped[str] = mapped_column(String(32))
    # null for the system's own jobs (the nightly recount)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), server_default=JobStatus.QUEUED.value)
    progress_done: Mapped[int] = mapped_column(server_default="0")
    progress_total: Mapped[int | None]
    params: Mapped[dict] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    result: Mapped[dict | None] = mapped_column(JSONB)
    error: Mapped[dict | None] = mapped_column(JSONB)
    # bumped by each claim; a worker writes only while the attempt is still its own
    attempt: Mapped[int] = mapped_column(server_default="0")
    heartbeat_at: Mapped[datetime | None] = mapped_column(TZ)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(TZ)
    finished_at: Mapped[datetime | None] = mapped_column(TZ)

    __table_args__ = (
        CheckConstraint("kind IN ('import_posts', 'export_user', 'recount', 'delete_user')", name="kind"),
        CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed')", name="status"),
        Index("ix_jobs_owner_created", "owner_id", text("created_at DESC"), text("id DESC")),
        Index("ix_jobs_unfinished", "status", "heartbeat_at", postgresql_where=text("status IN ('queued', 'running')")),
        # how many imports (or exports) a user has waiting: checked before each upload
        Index(
            "ix_jobs_owner_unfinished",
            "owner_id",
            "kind",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
    )


class JobFile(db.Model):
    """A job's input upload or its downloadable result, kept apart from the job row.

    The bytes are in JobFileChunk rows, so neither the web process that writes an upload
    nor the worker that reads it ever holds the whole file. A result whose retention has
    passed keeps this row (its download answers 410) and loses its chunks.
    """

    __tablename__ = "job_files"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(8), primary_key=True)
    filename: Mapped[str] = mapped_column(String(255), server_default="")
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger, server_default="0")
    purged_at: Mapped[datetime | None] = mapped_column(TZ)

    __table_args__ = (CheckConstraint("role IN ('input', 'result')", name="role"),)


class JobFileChunk(db.Model):
    """One piece of a job file, in order of `seq` from 0."""

    __tablename__ = "job_file_chunks"

    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    role: Mapped[str] = mapped_column(String(8), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (
        ForeignKeyConstraint(["job_id", "role"], ["job_files.job_id", "job_files.role"], ondelete="CASCADE"),
    )
