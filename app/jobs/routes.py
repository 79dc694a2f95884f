"""/api/v1/jobs: follow the long work you started."""

from __future__ import annotations

from flask import Response, stream_with_context

from app.api import ApiBlueprint
from app.auth.tokens import current_user, current_user_id
from app.jobs import files, service
from app.jobs.schemas import JobSchema
from app.schemas import PageArgsSchema, page_of

blp = ApiBlueprint("jobs", __name__, url_prefix="/jobs", description="Background jobs: imports, exports, recounts")


@blp.route("")
@blp.login_required()
@blp.arguments(PageArgsSchema, location="query")
@blp.response(200, page_of(JobSchema))
def list_jobs(args):
    """My jobs, newest first."""
    return service.list_for(current_user_id(), limit=args["limit"], cursor=args.get("cursor"))


@blp.route("/<uuid:job_id>")
@blp.login_required()
@blp.response(200, JobSchema)
@blp.alt_response(404, response="NOT_FOUND")
def get_job(job_id):
    """A job's status and progress (its owner or an admin)."""
    return service.get_for(current_user, job_id)


@blp.route("/<uuid:job_id>/result")
@blp.login_required()
@blp.response(200, content_type="application/json", description="the job's result document")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
@blp.alt_response(410, response="GONE")
def get_result(job_id):
    """Download what a finished job made (an export). Owner only; kept for
    JOB_RESULT_RETENTION_DAYS after the job finished, 410 afterwards."""
    file = service.result_of(current_user, job_id)
    return Response(
        stream_with_context(files.chunks(file.job_id, file.role)),
        mimetype=file.content_type,
        headers={
            "Content-Disposition": f'attachment; filename="{file.filename}"',
            "Content-Length": str(file.size),
        },
    )
