"""/api/v1/auth: register, log in, refresh."""

from __future__ import annotations

from flask import url_for
from flask_jwt_extended import current_user

from app.api import ApiBlueprint
from app.auth import service
from app.auth.schemas import LoginSchema, RegisterSchema, TokenPairSchema
from app.auth.tokens import issue_tokens
from app.users.schemas import PublicUserSchema

blp = ApiBlueprint("auth", __name__, url_prefix="/auth", description="Accounts and tokens")


@blp.route("/register", methods=["POST"])
@blp.arguments(RegisterSchema)
@blp.response(201, PublicUserSchema, headers={"Location": {"schema": {"type": "string"}}})
@blp.alt_response(409, response="CONFLICT")
def register(body):
    """Create an account."""
    user = service.register(**body)
    return user, {"Location": url_for("users.get_user", user_id=user.id)}


@blp.route("/login", methods=["POST"])
@blp.arguments(LoginSchema)
@blp.response(200, TokenPairSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
def login(body):
    """Trade a username or email and password for a token pair."""
    return issue_tokens(service.authenticate(body["login"], body["password"]))


@blp.route("/refresh", methods=["POST"])
@blp.login_required(refresh=True)
@blp.response(200, TokenPairSchema)
def refresh():
    """Trade a refresh token (as the bearer token) for a new pair."""
    return issue_tokens(current_user)
