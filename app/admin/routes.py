"""/api/v1/admin: account administration (admins only)."""

from __future__ import annotations

from app.admin import service
from app.admin.schemas import AdminUserListArgsSchema, AdminUserSchema, AdminUserUpdateSchema
from app.api import ApiBlueprint
from app.auth.tokens import current_user
from app.jobs.schemas import JobSchema
from app.schemas import page_of

blp = ApiBlueprint("admin", __name__, url_prefix="/admin", description="Account administration (admins only)")


@blp.route("/users")
@blp.login_required()
@blp.arguments(AdminUserListArgsSchema, location="query")
@blp.response(200, page_of(AdminUserSchema))
@blp.alt_response(403, response="FORBIDDEN")
def list_users(args):
    """Every user, with email, role and status."""
    return service.list_users(current_user, limit=args["limit"], cursor=args.get("cursor"), q=args.get("q"))


@blp.route("/users/<id:user_id>", methods=["PATCH"])
@blp.login_required()
@blp.arguments(AdminUserUpdateSchema)
@blp.response(200, AdminUserSchema)
@blp.alt_response(403, response="FORBIDDEN")
@blp.alt_response(404, response="NOT_FOUND")
def update_user(changes, user_id):
    """Change a user's role or deactivate them (their sessions end at once)."""
    return service.update_user(current_user, user_id, changes)


@blp.route("/users/<id:user_id>", methods=["DELETE"])
@blp.login_required()
@blp.starts_job(JobSchema)
@blp.alt_response(403, response="FORBIDDEN")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
def delete_user(user_id):
    """Delete an account: hidden and its tokens refused at once; the returned job removes
    its rows, then frees its username and email."""
    return service.delete_user(current_user, user_id)


@blp.route("/jobs/recount", methods=["POST"])
@blp.login_required()
@blp.starts_job(JobSchema)
@blp.alt_response(403, response="FORBIDDEN")
def recount():
    """Recompute every stored counter, in batches, as a job; its result says what was fixed."""
    return service.start_recount(current_user)
