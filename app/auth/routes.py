"""/api/v1/auth: accounts, tokens and sessions."""

from __future__ import annotations

from flask import request, url_for
from flask_jwt_extended import get_jwt

from app.api import ApiBlueprint
from app.auth import accounts, service
from app.auth.schemas import (
    AcceptedSchema,
    LoginSchema,
    PasswordChangeSchema,
    PasswordResetConfirmSchema,
    PasswordResetRequestSchema,
    RegisterSchema,
    SessionSchema,
    TokenPairSchema,
    VerifyEmailSchema,
)
from app.auth.tokens import current_user, current_user_id
from app.limits import (
    LOGIN_CEILING,
    get_remote_address,
    login_account,
    login_account_and_address,
    mailed_address,
    token_claim,
)
from app.schemas import PageArgsSchema, page_of
from app.users.schemas import PublicUserSchema

blp = ApiBlueprint("auth", __name__, url_prefix="/auth", description="Accounts, tokens and sessions")


@blp.route("/register", methods=["POST"])
@blp.rate_limit("RATELIMIT_REGISTER_PER_IP", key=get_remote_address, scope="register-ip")
@blp.arguments(RegisterSchema)
@blp.response(201, PublicUserSchema, headers={"Location": {"schema": {"type": "string"}}})
@blp.alt_response(409, response="CONFLICT")
def register(body):
    """Create an account; with mail on, a verification mail goes to its address."""
    user = accounts.register(**body)
    return user, {"Location": url_for("users.get_user", user_id=user.id)}


@blp.route("/login", methods=["POST"])
@blp.rate_limit("RATELIMIT_LOGIN_PER_IP", key=get_remote_address, scope="login-ip")
@blp.rate_limit("RATELIMIT_LOGIN_PER_ACCOUNT_IP", key=login_account_and_address, scope="login-account-ip")
@blp.rate_limit("RATELIMIT_LOGIN_PER_ACCOUNT", key=login_account, scope="login-account", error_message=LOGIN_CEILING)
@blp.arguments(LoginSchema)
@blp.response(200, TokenPairSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
def login(body):
    """Trade a username or email and password for a token pair; opens a session."""
    return service.login(
        body["login"],
        body["password"],
        user_agent=request.user_agent.string or "",
        ip=request.remote_addr or "",
    )


@blp.route("/refresh", methods=["POST"])
@blp.rate_limit("RATELIMIT_REFRESH_PER_SESSION", key=token_claim("sid"), scope="refresh-session")
@blp.login_required(refresh=True)
@blp.response(200, TokenPairSchema)
def refresh():
    """Trade the refresh token (as the bearer token) for a new pair. Each refresh token
    works once: presenting a used one ends the whole session."""
    return service.refresh(current_user, get_jwt())


@blp.route("/logout", methods=["POST"])
@blp.login_required()
@blp.response(204)
def logout():
    """End this session: its access and refresh tokens stop working at once."""
    service.logout(get_jwt())


@blp.route("/logout-all", methods=["POST"])
@blp.login_required()
@blp.response(204)
def logout_all():
    """End every session of mine, on every device."""
    service.logout_all(current_user_id(), get_jwt())


@blp.route("/sessions")
@blp.login_required()
@blp.arguments(PageArgsSchema, location="query")
@blp.response(200, page_of(SessionSchema))
def list_sessions(args):
    """My sessions still in force, newest first."""
    return service.list_sessions(current_user_id(), get_jwt(), limit=args["limit"], cursor=args.get("cursor"))


@blp.route("/sessions/<uuid:session_id>", methods=["DELETE"])
@blp.login_required()
@blp.response(204)
@blp.alt_response(404, response="NOT_FOUND")
def end_session(session_id):
    """End one of my sessions."""
    service.end_session(current_user_id(), session_id)


@blp.route("/password", methods=["POST"])
@blp.rate_limit("RATELIMIT_PASSWORD_PER_USER", key=token_claim("sub"), scope="password-user")
@blp.login_required()
@blp.arguments(PasswordChangeSchema)
@blp.response(204)
def change_password(body):
    """Change my password; every other session of mine ends."""
    service.change_password(current_user, body["current_password"], body["new_password"], get_jwt())


RESET_ACCEPTED = {
    "detail": "If an active account has this address, a mail with a reset token is on its way. "
    "The token works once, within the time the mail says."
}


@blp.route("/password-reset", methods=["POST"])
@blp.rate_limit("RATELIMIT_PASSWORD_RESET_PER_IP", key=get_remote_address, scope="reset-ip")
@blp.rate_limit("RATELIMIT_PASSWORD_RESET_PER_ADDRESS", key=mailed_address, scope="reset-address")
@blp.arguments(PasswordResetRequestSchema)
@blp.response(202, AcceptedSchema)
def request_password_reset(body):
    """Mail a password reset token to this address, if an active account has it. The
    answer is the same whether or not one does."""
    accounts.request_password_reset(body["email"])
    return RESET_ACCEPTED


@blp.route("/password-reset/confirm", methods=["POST"])
@blp.rate_limit("RATELIMIT_ACCOUNT_TOKEN_PER_IP", key=get_remote_address, scope="account-token-ip")
@blp.arguments(PasswordResetConfirmSchema)
@blp.response(204)
@blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
def confirm_password_reset(body):
    """Set a new password with the mailed token; every session of the account ends. An
    unknown, expired or used token is a 422 naming `token`."""
    accounts.reset_password(body["token"], body["new_password"])


@blp.route("/verify-email", methods=["POST"])
@blp.rate_limit("RATELIMIT_ACCOUNT_TOKEN_PER_IP", key=get_remote_address, scope="account-token-ip")
@blp.arguments(VerifyEmailSchema)
@blp.response(204)
@blp.alt_response(409, response="CONFLICT")
@blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
def verify_email(body):
    """Verify the address a mailed token was sent to; for an email change, that address
    becomes the account's now."""
    accounts.verify_email(body["token"])


@blp.route("/verify-email/resend", methods=["POST"])
@blp.rate_limit("RATELIMIT_VERIFY_RESEND_PER_USER", key=token_claim("sub"), scope="verify-resend-user")
@blp.login_required()
@blp.response(202, AcceptedSchema)
@blp.alt_response(409, response="CONFLICT")
def resend_verification():
    """Mail a new verification token to my address (older ones stop working)."""
    accounts.resend_verification(current_user)
    return {"detail": "A verification mail is on its way."}
