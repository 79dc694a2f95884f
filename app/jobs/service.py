"""Jobs: long work recorded as rows, run by a worker (or inline by the CLI).

A job is claimed with one conditional UPDATE that bumps its `attempt`; every progress
write is guarded by that attempt, so a worker that lost its claim (presumed dead and
replaced) cannot write any more. Work is committed batch by batch together with the
progress, so a job that is run again after a crash resumes where the last commit left
it, and a batch is never applied twice.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import OperationalError

from app import queue
from app.db import db
from app.errors import Conflict, Gone, NotFound
from app.jobs.files import FileWriter
from app.models import Job, JobFile, JobKind, JobStatus, User
from app.pagination import Page, keyset_page

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]


class LostClaim(Exception):
    """Another worker has taken this job over; stop without writing."""


class JobFailed(Exception):
    """A job cannot go on, for a reason its owner may read (the message says it plainly).
    Any other exception fails the job with a generic message; only the log has details."""


INTERNAL_ERROR = {"detail": "The job stopped on an internal error. Start it again; if it fails again, report its id."}
UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)


# -- creating and reading -------------------------------------------------------------


def create(kind: JobKind, owner_id: int | None, *, params: dict | None = None, queue: bool = True) -> Job:
    """Record a queued job, commit, then hand it to a worker (unless `queue` is false:
    the CLI runs it in its own process)."""
    return submit(new(kind, owner_id, params=params), queue=queue)


def create_single(kind: JobKind, owner_id: int, *, what: str) -> Job:
    """Record and queue a job unless the owner has one of this kind queued or running
    (409 naming it: that one will give them what they asked for)."""
    job = new(kind, owner_id)
    if running := unfinished(owner_id, kind, lock=True, besides=job.id):
        db.session.rollback()
        raise Conflict(
            f"Your {what} {running[0]} is still queued or running; follow it, or start another when it has finished.",
            extra={"job": str(running[0])},
        )
    return submit(job)


def new(kind: JobKind, owner_id: int | None, *, params: dict | None = None) -> Job:
    """A queued job in the session, not yet committed: its input file may follow."""
    job = Job(id=uuid.uuid4(), kind=kind.value, owner_id=owner_id, params=params or {})
    db.session.add(job)
    db.session.flush()
    return job


def submit(job: Job, *, queue: bool = True) -> Job:
    """Commit the job (and whatever came with it), then queue it."""
    db.session.commit()
    if queue:
        enqueue(job.id)
    return job


def unfinished(owner_id: int, kind: JobKind, *, lock: bool = False, besides: uuid.UUID | None = None) -> list:
    """Ids of the owner's queued or running jobs of one kind, oldest first.

    With `lock`, first take a lock on (owner, kind) until the transaction ends: two
    requests then cannot both find room for one more job. `besides` leaves one out (the
    job the caller is about to commit).
    """
    if lock:
        db.session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(f"jobs:{kind}:{owner_id}", 0))))
    stmt = select(Job.id).where(Job.owner_id == owner_id, Job.kind == kind.value, Job.status.in_(UNFINISHED))
    if besides is not None:
        stmt = stmt.where(Job.id != besides)
    return list(db.session.scalars(stmt.order_by(Job.created_at, Job.id)))


def enqueue(job_id: uuid.UUID) -> None:
    """Queue the job; if the broker is down, the reaper queues it once it is back."""
    queue.send(queue.RUN_JOB, [str(job_id)])


def get_for(actor: User, job_id: uuid.UUID) -> Job:
    """A job its owner or an admin may see; to anyone else it does not exist."""
    job = db.session.get(Job, job_id)
    if job is None or (job.owner_id != actor.id and not actor.is_admin):
        raise NotFound(f"No job {job_id}.")
    return job


def list_for(owner_id: int, *, limit: int, cursor: str | None) -> Page:
    stmt = select(Job).where(Job.owner_id == owner_id)
    return keyset_page(stmt, [Job.created_at, Job.id], [datetime, uuid.UUID], limit=limit, cursor=cursor)


def result_of(actor: User, job_id: uuid.UUID) -> JobFile:
    """The downloadable result of one of my jobs (owner only, not even admins)."""
    job = db.session.get(Job, job_id)
    if job is None or job.owner_id != actor.id:
        raise NotFound(f"No job {job_id}.")
    if job.status != JobStatus.SUCCEEDED:
        raise Conflict(f"The job is {job.status}; its result is not ready.", errors={"status": [job.status]})
    file = db.session.get(JobFile, (job_id, "result"))
    if file is None:
        raise NotFound("This job has no downloadable result.")
    if file.purged_at is not None:
        raise Gone(
            f"This result was deleted on {file.purged_at.date().isoformat()}: a result is kept "
            f"{current_app.config['JOB_RESULT_RETENTION_DAYS']} days, or until a newer one of the same kind "
            "is made. Start the job again for a new one."
        )
    return file


# -- running --------------------------------------------------------------------------


@dataclass
class Tracker:
    """What a running job reports: progress and partial results, under its claim."""

    job: Job
    attempt: int
    on_progress: Progress | None = None
    state: dict = field(default_factory=dict)

    def checkpoint(self, done: int, total: int | None = None) -> None:
        """Write progress and state in the caller's transaction, then commit both."""
        values = {"progress_done": done, "heartbeat_at": func.now(), "result": bounded(self.state)}
        if total is not None:
            values["progress_total"] = total
        claimed = db.session.execute(
            update(Job).where(Job.id == self.job.id, Job.attempt == self.attempt).values(**values)
        ).rowcount
        if not claimed:
            db.session.rollback()
            raise LostClaim(str(self.job.id))
        db.session.commit()
        if self.on_progress:
            self.on_progress(done, total if total is not None else self.job.progress_total)

    def result_file(self, content_type: str, filename: str) -> FileWriter:
        """The job's downloadable result, written chunk by chunk (an earlier attempt's
        chunks are dropped); each checkpoint commits what has been written so far."""
        return FileWriter(self.job.id, "result", content_type, filename)


def bounded(state: dict) -> dict:
    """The state as stored and shown on every poll: at most JOB_RESULT_MAX_BYTES of
    JSON. Runners keep their reports small; should one not, its lists and objects are
    dropped (the counts stay) rather than grow every poll of the job."""
    limit = current_app.config["JOB_RESULT_MAX_BYTES"]
    if len(json.dumps(state, default=str)) <= limit:
        return state
    log.warning("job state over %d bytes; keeping its counts only", limit)
    kept = {k: v for k, v in state.items() if _scalar(v)}
    return {**kept, "truncated": True}


def _scalar(value) -> bool:
    return isinstance(value, int | float | bool) or (isinstance(value, str) and len(value) < 200)


def _stale_after() -> timedelta:
    return timedelta(seconds=current_app.config["JOB_STALE_SECONDS"])


def claim(job_id: uuid.UUID) -> Tracker | None:
    """Take a queued job, or a running one whose worker stopped beating; else None."""
    stale = datetime.now(UTC) - _stale_after()
    attempt = db.session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            or_(Job.status == JobStatus.QUEUED, (Job.status == JobStatus.RUNNING) & (Job.heartbeat_at < stale)),
        )
        .values(
            status=JobStatus.RUNNING,
            attempt=Job.attempt + 1,
            heartbeat_at=func.now(),
            started_at=func.coalesce(Job.started_at, func.now()),
        )
        .returning(Job.attempt)
    ).scalar()
    db.session.commit()
    if attempt is None:
        return None
    job = db.session.get(Job, job_id, populate_existing=True)
    return Tracker(job, attempt, state=dict(job.result or {}))


def run(job_id: uuid.UUID, on_progress: Progress | None = None) -> str | None:
    """Claim and run a job to its end; returns its final status (None: not ours)."""
    tracker = claim(job_id)
    if tracker is None:
        log.info("job %s is not claimable (done, or running elsewhere)", job_id)
        return None
    tracker.on_progress = on_progress
    try:
        current_app.extensions["job_runners"][JobKind(tracker.job.kind)](tracker)  # app/jobs/runners.py
    except LostClaim:
        log.warning("job %s was taken over by another worker; stopping", job_id)
        return None
    except OperationalError:
        db.session.rollback()
        _release(tracker)  # a transient database failure: let the retry claim it again
        raise
    except JobFailed as exc:
        db.session.rollback()
        log.warning("job %s failed: %s", job_id, exc)
        _finish(tracker, JobStatus.FAILED, error={"detail": str(exc)[:500]})
        return JobStatus.FAILED.value
    except Exception:
        db.session.rollback()
        log.exception("job %s failed", job_id)  # the details stay in the log: they may quote input
        _finish(tracker, JobStatus.FAILED, error=INTERNAL_ERROR)
        return JobStatus.FAILED.value
    _finish(tracker, JobStatus.SUCCEEDED)
    return JobStatus.SUCCEEDED.value


def _finish(tracker: Tracker, status: JobStatus, error: dict | None = None) -> None:
    db.session.execute(
        update(Job)
        .where(Job.id == tracker.job.id, Job.attempt == tracker.attempt)
        .values(
            status=status, result=bounded(tracker.state), error=error, finished_at=func.now(), heartbeat_at=func.now()
        )
    )
    db.session.commit()


def _release(tracker: Tracker) -> None:
    try:
        db.session.execute(
            update(Job).where(Job.id == tracker.job.id, Job.attempt == tracker.attempt).values(status=JobStatus.QUEUED)
        )
        db.session.commit()
    except OperationalError:
        db.session.rollback()  # the database is gone; the reaper will find the job stale


def requeue_stale() -> int:
    """Queue again the jobs nobody is running: queued for a while (the message was
    lost) or running without a heartbeat (the worker died). Returns how many."""
    now = datetime.now(UTC)
    # a queued job may rightly wait behind others: give it longer before calling it lost,
    # and note when it was queued again so the next pass leaves it alone
    lost = db.session.scalars(
        update(Job)
        .where(
            Job.status == JobStatus.QUEUED,
            func.coalesce(Job.heartbeat_at, Job.created_at) < now - 5 * _stale_after(),
        )
        .values(heartbeat_at=func.now())
        .returning(Job.id)
    ).all()
    abandoned = db.session.scalars(
        select(Job.id).where(Job.status == JobStatus.RUNNING, Job.heartbeat_at < now - _stale_after())
    ).all()
    db.session.commit()
    for job_id in [*lost, *abandoned]:
        enqueue(job_id)
    return len(lost) + len(abandoned)
