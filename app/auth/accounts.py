"""Account flows that go through the mailbox: registration's verification mail, password
reset, verifying an address, changing it. Mail is on when MAIL_URL is set; off, these
flows answer 503 and an email change applies at once (nothing can require a verified
address then)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.auth import account_tokens
from app.auth import service as auth
from app.db import db
from app.errors import Conflict, ServiceUnavailable, ValidationFailed, check_version
from app.mail import outbox, smtp
from app.models import TokenPurpose, User
from app.users.service import update_profile

NO_MAIL = "Mail is not configured on this server (MAIL_URL is not set), so nothing can be mailed or verified."
EMAIL_TAKEN = "That email is already taken."


def require_mail() -> None:
    if not smtp.enabled():
        raise ServiceUnavailable(NO_MAIL)


def register(username: str, email: str, password: str) -> User:
    """auth.service.register, then a verification mail to the new address (mail on)."""
    user = auth.register(username, email, password)
    if smtp.enabled():
        _mail_verification(user.id, user.username, user.email)
    return user


def _mail_verification(user_id: int, username: str, address: str) -> None:
    """A verification token for `address`, mailed to it; commits."""
    cfg = current_app.config
    hours = cfg["EMAIL_VERIFY_TOKEN_HOURS"]
    token = account_tokens.issue(user_id, TokenPurpose.VERIFY, timedelta(hours=hours), new_email=address)
    mail = outbox.add(
        user_id,
        address,
        "verify_email",
        username=username,
        email=address,
        token=token,
        link=cfg["EMAIL_VERIFY_URL"].replace("{token}", token),
        hours=hours,
    )
    db.session.commit()
    outbox.dispatch(mail)


def request_password_reset(email: str) -> None:
    """Mail a reset token if an active account has this address; else nothing. The caller
    answers the same either way."""
    require_mail()
    user = db.session.scalars(select(User).where(func.lower(User.email) == email.lower(), User.is_active)).first()
    if user is None:
        return
    minutes = current_app.config["PASSWORD_RESET_TOKEN_MINUTES"]
    token = account_tokens.issue(user.id, TokenPurpose.RESET, timedelta(minutes=minutes))
    mail = outbox.add(
        user.id,
        user.email,
        "password_reset",
        username=user.username,
        token=token,
        link=current_app.config["PASSWORD_RESET_URL"].replace("{token}", token),
        minutes=minutes,
    )
    db.session.commit()
    outbox.dispatch(mail)


def _owner(used) -> User:
    """The active account a token just used belongs to (locked), else the token's 422."""
    user = db.session.get(User, used.user_id, with_for_update=True, populate_existing=True)
    if user is None or not user.is_active:
        db.session.rollback()
        raise ValidationFailed(account_tokens.INVALID, errors={"token": [account_tokens.INVALID]})
    return user


def reset_password(token: str, new_password: str) -> None:
    """Set the password a reset token allows; the token is spent and every session of the
    account ends, in one commit."""
    require_mail()
    user = _owner(account_tokens.use(token, TokenPurpose.RESET))
    user.password_hash = auth.hash_password(new_password)
    auth.revoke_all_sessions(user.id, reason="password-reset")


def verify_email(token: str) -> None:
    """Mark the address the token was mailed to as verified; if it is not the account's
    (an email change), it becomes the account's address now (409 if taken meanwhile)."""
    require_mail()
    used = account_tokens.use(token, TokenPurpose.VERIFY)
    user = _owner(used)
    if used.new_email.lower() != user.email.lower():
        user.email = used.new_email
    user.email_verified = True
    user.version = User.version + 1
    user.updated_at = func.now()
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict(EMAIL_TAKEN, errors={"email": ["Already taken."]}) from None


def resend_verification(user: User) -> None:
    """A new verification mail for my current address (older links stop working)."""
    require_mail()
    if user.email_verified:
        raise Conflict("Your email address is already verified.", errors={"email": ["Already verified."]})
    _mail_verification(user.id, user.username, user.email)


def _taken_by_another(user_id: int, email: str) -> bool:
    other = auth.account_id(email)
    return other is not None and other != user_id


def update_me(user: User, changes: dict, expected_versions: Collection[int] | None) -> dict | None:
    """A profile edit with a new email (the caller checked the login is fresh), which
    replaces the old one only once a mail to it is verified; with mail off it applies at
    once, unverified. The profile as stored; None when the account is gone."""
    user_id, username, old_email, version = user.id, user.username, user.email, user.version
    email = changes.pop("email", None)
    if email is not None and email.lower() == old_email.lower():
        email = None
    if email is not None and _taken_by_another(user_id, email):
        raise Conflict(EMAIL_TAKEN, errors={"email": ["Already taken."]})
    if email is not None and not smtp.enabled():
        changes.update(email=email, email_verified=False)
    if changes:
        try:
            profile = update_profile(user_id, changes, expected_versions)
        except IntegrityError:
            db.session.rollback()
            raise Conflict(EMAIL_TAKEN, errors={"email": ["Already taken."]}) from None
    else:
        check_version(expected_versions, version)
        profile = {column.key: getattr(user, column.key) for column in User.__table__.columns}
    if profile is not None and email is not None and smtp.enabled():
        _mail_verification(user_id, username, email)
    return profile
