"""/api/v1/posts and /api/v1/feed."""

from __future__ import annotations

import functools

from flask import Response, current_app, request, url_for

from app import uploads
from app.api import ApiBlueprint, expected_versions
from app.auth.tokens import account_gone, current_user, current_user_id
from app.errors import UnsupportedMediaType, etag_of
from app.jobs.schemas import ImportFileSchema, ImportFormSchema, JobSchema
from app.limits import get_remote_address, not_a_search, token_claim
from app.posts import imports, service
from app.posts.schemas import PostCreateSchema, PostListArgsSchema, PostSchema, PostUpdateSchema
from app.schemas import PageArgsSchema, page_of

blp = ApiBlueprint("posts", __name__, description="Posts and the feed")

ETAG_HEADER = {"ETag": {"schema": {"type": "string"}, "description": "the post's version"}}


def _etag(version: int) -> dict:
    return {"ETag": f'"{etag_of(version)}"'}


@blp.route("/posts")
@blp.rate_limit("RATELIMIT_SEARCH_PER_IP", key=get_remote_address, scope="search-ip", exempt_when=not_a_search)
@blp.arguments(PostListArgsSchema, location="query")
@blp.response(200, page_of(PostSchema))
def list_posts(args):
    """All posts, newest first. `?author=` one author's; `?q=` full-text search (limited
    per address, and answered 503 when it takes too long)."""
    page = service.list_posts(
        limit=args["limit"], cursor=args.get("cursor"), author=args.get("author"), q=args.get("q")
    )
    return Response(page, mimetype="application/json")


@blp.route("/posts", methods=["POST"])
@blp.login_required()
@blp.arguments(PostCreateSchema)
@blp.response(201, PostSchema, headers={"Location": {"schema": {"type": "string"}}, **ETAG_HEADER})
def create_post(body):
    """Write a post."""
    post = service.create_post(current_user_id(), body["title"], body["body"])
    if post is None:
        raise account_gone()
    return post, {"Location": url_for("posts.get_post", post_id=post["id"]), **_etag(post["version"])}


@blp.route("/posts/<id:post_id>")
@blp.response(200, PostSchema, headers=ETAG_HEADER)
@blp.alt_response(404, response="NOT_FOUND")
def get_post(post_id):
    """A post with its author's public summary."""
    version, payload = service.public_post_json(post_id)
    return Response(payload, mimetype="application/json", headers={"ETag": f'"{etag_of(version)}"'})


@blp.route("/posts/<id:post_id>", methods=["PATCH"])
@blp.login_required()
@blp.arguments(PostUpdateSchema)
@blp.response(200, PostSchema, headers=ETAG_HEADER)
@blp.alt_response(403, response="FORBIDDEN")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(412, response="PRECONDITION_FAILED")
def update_post(changes, post_id):
    """Edit a post (author or admin). Send `If-Match` with the ETag you read."""
    post = service.update_post(post_id, current_user_id(), changes, expected_versions(request.headers.get("If-Match")))
    return post, _etag(post["version"])


@blp.route("/posts/<id:post_id>", methods=["DELETE"])
@blp.login_required()
@blp.response(204)
@blp.alt_response(403, response="FORBIDDEN")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(412, response="PRECONDITION_FAILED")
def delete_post(post_id):
    """Delete a post (author or admin)."""
    service.delete_post(post_id, current_user, expected_versions(request.headers.get("If-Match")))


def _before_the_body(view):
    """The refusals an upload gets before a byte of its body is read (after
    authentication): the media type, the host's uploads in flight, the user's unfinished
    imports. The view's arguments, below this, are what read the body."""

    @functools.wraps(view)
    def guarded(*args, **kwargs):
        request.max_content_length = current_app.config["IMPORT_MAX_BYTES"]
        if request.mimetype != "multipart/form-data":
            raise UnsupportedMediaType("Upload the file as multipart/form-data.")
        # the slot first: a Redis round trip; refused while every upload worker is busy,
        # it frees its web worker soonest
        with uploads.slot():
            imports.before_upload(current_user.id)
            return view(*args, **kwargs)

    return guarded


@blp.route("/posts/import", methods=["POST"])
# its 429 also answers a user with too many unfinished imports
@blp.rate_limit("RATELIMIT_IMPORT_PER_USER", key=token_claim("sub"), scope="import-user")
@blp.login_required()
@_before_the_body
@blp.arguments(ImportFileSchema, location="files")
@blp.arguments(ImportFormSchema, location="form")
@blp.starts_job(JobSchema)
@blp.alt_response(413, response="REQUEST_ENTITY_TOO_LARGE")
@blp.alt_response(415, response="UNSUPPORTED_MEDIA_TYPE")
@blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
def import_posts(files, form):
    """Import my posts from a JSON Lines or CSV file (up to 100,000 lines) as a job.

    Each line needs external_id, title and body; a line whose external_id I already
    used is skipped, so sending a file twice imports it once. At most
    IMPORT_MAX_UNFINISHED_PER_USER of my imports may be queued or running (429 names
    them); 503 when the server is taking in as many uploads as it allows at once."""
    upload = files["file"]
    filename, media_type = upload.filename or "", upload.mimetype or ""
    return imports.start(current_user.id, upload.stream, filename, media_type, form.get("format"))


@blp.route("/feed")
@blp.login_required()
@blp.arguments(PageArgsSchema, location="query")
@blp.response(200, page_of(PostSchema))
def feed(args):
    """Posts by the users I follow, newest first."""
    page = service.feed(current_user_id(), limit=args["limit"], cursor=args.get("cursor"))
    return Response(page, mimetype="application/json")
