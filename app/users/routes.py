"""/api/v1/users: profiles, their posts and the follow graph."""

from __future__ import annotations

from flask import Response, request
from flask_jwt_extended import verify_jwt_in_request

from app.api import ApiBlueprint, expected_versions
from app.auth import accounts
from app.auth.tokens import account_gone, current_user, current_user_id
from app.errors import etag_of
from app.jobs import service as jobs
from app.jobs.schemas import JobSchema
from app.limits import no_email_change, token_claim
from app.models import JobKind
from app.posts import service as posts
from app.posts.schemas import PostSchema
from app.schemas import PageArgsSchema, page_of
from app.users import deletion, service
from app.users.schemas import (
    PrivateUserSchema,
    ProfileUpdateSchema,
    PublicUserSchema,
    UserListArgsSchema,
    UserListItemSchema,
)

blp = ApiBlueprint("users", __name__, url_prefix="/users", description="Profiles and the follow graph")

ETAG_HEADER = {"ETag": {"schema": {"type": "string"}, "description": "the profile's version"}}


@blp.route("")
@blp.arguments(UserListArgsSchema, location="query")
@blp.response(200, page_of(UserListItemSchema))
def list_users(args):
    """Active users by id; `?q=` prefix search; `?include=posts` embeds 5 newest posts each."""
    page = service.list_users_json(
        limit=args["limit"], cursor=args.get("cursor"), q=args.get("q"), include_posts="include" in args
    )
    return Response(page, mimetype="application/json")


@blp.route("/me")
@blp.login_required()
@blp.response(200, PrivateUserSchema, headers=ETAG_HEADER)
def get_me():
    """My profile, with email and role."""
    return current_user, {"ETag": f'"{etag_of(current_user.version)}"'}


@blp.route("/me", methods=["PATCH"])
# an email change mails the new address: as many as resends allow, counted apart
@blp.rate_limit(
    "RATELIMIT_VERIFY_RESEND_PER_USER", key=token_claim("sub"), scope="email-change-user", exempt_when=no_email_change
)
@blp.login_required()
@blp.arguments(ProfileUpdateSchema)
@blp.response(200, PrivateUserSchema, headers=ETAG_HEADER)
@blp.alt_response(412, response="PRECONDITION_FAILED")
@blp.alt_response(409, response="CONFLICT")
def update_me(changes):
    """Change my display name, bio or email. Send `If-Match` with the ETag you read. A new
    email needs a fresh access token (from a login, not a refresh: else 401) and, with
    mail on, replaces the old one once the mail sent to it is verified."""
    expected = expected_versions(request.headers.get("If-Match"))
    if "email" in changes:
        verify_jwt_in_request(fresh=True)
        user = accounts.update_me(current_user, changes, expected)
    else:
        user = service.update_profile(current_user_id(), changes, expected)
    if user is None:
        raise account_gone()
    return user, {"ETag": f'"{etag_of(user["version"])}"'}


@blp.route("/me", methods=["DELETE"])
@blp.login_required(fresh=True)
@blp.response(204)
def delete_me():
    """Delete my account, with a fresh access token (from a login). At once every token of
    mine is refused and my profile and posts disappear; a job then removes every row of
    mine, after which my username and email are free again."""
    deletion.delete_account(current_user.id, reason="deleted-by-owner")


@blp.route("/me/export", methods=["POST"])
@blp.rate_limit("RATELIMIT_EXPORT_PER_USER", key=token_claim("sub"), scope="export-user")
@blp.login_required()
@blp.starts_job(JobSchema)
@blp.alt_response(409, response="CONFLICT")
def export_me():
    """Build a JSON document of my profile, posts, followers and following, as a job;
    download it from /jobs/{id}/result when the job has succeeded. One at a time: while
    one is queued or running, another answers 409 naming it."""
    return jobs.create_single(JobKind.EXPORT_USER, current_user.id, what="export")


@blp.route("/<id:user_id>")
@blp.response(200, PublicUserSchema)
@blp.alt_response(404, response="NOT_FOUND")
def get_user(user_id):
    """A public profile."""
    return Response(service.public_profile_json(user_id), mimetype="application/json")


@blp.route("/<id:user_id>/posts")
@blp.arguments(PageArgsSchema, location="query")
@blp.response(200, page_of(PostSchema))
@blp.alt_response(404, response="NOT_FOUND")
def user_posts(args, user_id):
    """That user's posts, newest first."""
    page = posts.posts_of(user_id, limit=args["limit"], cursor=args.get("cursor"))
    return Response(page, mimetype="application/json")


@blp.route("/<id:user_id>/follow", methods=["PUT"])
@blp.login_required()
@blp.response(204)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
def follow(user_id):
    """Follow a user (idempotent)."""
    if not service.follow(current_user_id(), user_id):
        raise account_gone()


@blp.route("/<id:user_id>/follow", methods=["DELETE"])
@blp.login_required()
@blp.response(204)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
def unfollow(user_id):
    """Stop following a user (idempotent)."""
    if not service.unfollow(current_user_id(), user_id):
        raise account_gone()


@blp.route("/<id:user_id>/followers")
@blp.arguments(PageArgsSchema, location="query")
@blp.response(200, page_of(PublicUserSchema))
@blp.alt_response(404, response="NOT_FOUND")
def followers(args, user_id):
    """Who follows this user, most recent first."""
    return service.followers(user_id, limit=args["limit"], cursor=args.get("cursor"))


@blp.route("/<id:user_id>/following")
@blp.arguments(PageArgsSchema, location="query")
@blp.response(200, page_of(PublicUserSchema))
@blp.alt_response(404, response="NOT_FOUND")
def following(args, user_id):
    """Whom this user follows, most recent first."""
    return service.following(user_id, limit=args["limit"], cursor=args.get("cursor"))
