"""Administration: accounts, and everyone's jobs. Used by the admin API (which checks the
actor) and the CLI."""

from __future__ import annotations

from sqlalchemy import func, or_, select

from app import cache
from app.auth import revocation
from app.auth.service import register, revoke_all_sessions
from app.db import db
from app.errors import Forbidden, NotFound, ValidationFailed
from app.models import Job, Role, User
from app.pagination import Page, keyset_page
from app.posts.service import author_visibility_changed
from app.users.deletion import delete_account
from app.users.service import escape_like, start_recount_job

ROLES = tuple(role.value for role in Role)


def require_admin(actor: User) -> None:
    if not actor.is_admin:
        raise Forbidden("Administrators only.")


def list_users(actor: User, *, limit: int, cursor: str | None, q: str | None = None) -> Page:
    """Every user, active or not, with email and role."""
    require_admin(actor)
    stmt = select(User)
    if q:
        prefix = escape_like(q.lower()) + "%"
        stmt = stmt.where(or_(func.lower(User.username).like(prefix), func.lower(User.email).like(prefix)))
    return keyset_page(stmt, [User.id], [int], limit=limit, cursor=cursor, descending=False)


def update_user(actor: User, user_id: int, changes: dict) -> User:
    """An admin changes a user's role or active flag; not their own (no self-lockout)."""
    require_admin(actor)
    if user_id == actor.id:
        raise ValidationFailed(
            "Administrators cannot change their own role or status here.",
            errors={"user_id": ["Cannot change your own account."]},
        )
    return set_account(user_id, **changes)


def find_user(username: str) -> User:
    user = db.session.scalars(select(User).where(func.lower(User.username) == username.lower())).first()
    if user is None:
        raise NotFound(f"No user named {username}.")
    return user


def set_account(user_id: int, *, role: str | None = None, is_active: bool | None = None) -> User:
    """Apply role / active changes; deactivating ends every session of the user."""
    user = db.session.get(User, user_id, with_for_update=True)
    if user is None or user.deleted_at is not None:
        db.session.rollback()
        raise NotFound(f"No user with id {user_id}.")
    if role is not None:
        user.role = role
    if is_active is not None:
        user.is_active = is_active
    user.version = User.version + 1
    user.updated_at = func.now()
    if is_active is False:
        # in the same commit as the flag: no token of theirs outlives the change
        revoke_all_sessions(user_id, reason="deactivated")
    else:
        db.session.commit()
    if is_active is not None:  # every process asks PostgreSQL about this account, at once
        revocation.mark_accounts_changed([user_id])
    if is_active is None:
        cache.invalidate(cache.profile_key(user_id))
    else:  # they join or leave the users; their posts appear or vanish in lists and feeds
        author_visibility_changed(user_id)
    return db.session.get(User, user_id)


def delete_user(actor: User, user_id: int) -> Job:
    """An admin deletes an account (not their own here: DELETE /users/me does that)."""
    require_admin(actor)
    if user_id == actor.id:
        raise ValidationFailed(
            "Administrators delete their own account with DELETE /users/me.",
            errors={"user_id": ["Cannot delete your own account here."]},
        )
    return delete_account(user_id, reason="deleted-by-admin")


def delete_now(username: str) -> Job:
    """The CLI's deletion: hidden at once like the others, the job left to the caller."""
    return delete_account(find_user(username).id, reason="deleted-by-admin", queue=False)


def create_admin(username: str, email: str, password: str) -> User:
    """A new account with the admin role (409 naming the field when a name is taken)."""
    user = register(username, email, password)
    user.role = Role.ADMIN.value
    db.session.commit()
    return user


def start_recount(actor: User) -> Job:
    require_admin(actor)
    return start_recount_job(actor.id)


def newest_jobs(*, limit: int, status: str | None = None) -> list[tuple[Job, str | None]]:
    """Everyone's newest jobs, each with its owner's username (None: the system's)."""
    stmt = select(Job, User.username).outerjoin(User, User.id == Job.owner_id)
    if status:
        stmt = stmt.where(Job.status == status)
    return [tuple(row) for row in db.session.execute(stmt.order_by(Job.created_at.desc()).limit(limit))]


def job_as_stored(job_id) -> Job:
    """A job read again from the database (after running it here)."""
    return db.session.get(Job, job_id, populate_existing=True)
