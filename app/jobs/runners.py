"""What each kind of job runs: the same service code the CLI calls.

app/jobs/service.py runs a job with the runner the app holds for its kind (the runners
start jobs of their own, so that module cannot import this one)."""

from __future__ import annotations

from flask import Flask

from app.models import JobKind
from app.posts.imports import run_import
from app.users.deletion import run_deletion
from app.users.export import run_export
from app.users.service import recount_counters


def run_recount(tracker) -> None:
    result = recount_counters(progress=tracker.checkpoint)
    tracker.state.update(result)
    tracker.checkpoint(result["users_checked"], result["users_checked"])


RUNNERS = {
    JobKind.IMPORT_POSTS: run_import,
    JobKind.EXPORT_USER: run_export,
    JobKind.RECOUNT: run_recount,
    JobKind.DELETE_USER: run_deletion,
}


def init_runners(app: Flask) -> None:
    app.extensions["job_runners"] = RUNNERS
