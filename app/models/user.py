"""Users and the follow graph."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Identity, Index, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import TZ, db


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    username: Mapped[str] = mapped_column(String(30))
    email: Mapped[str] = mapped_column(String(254))
    password_hash: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(50))
    bio: Mapped[str] = mapped_column(Text, server_default="")
    role: Mapped[str] = mapped_column(String(10), server_default=Role.USER.value)
    is_active: Mapped[bool] = mapped_column(server_default=text("true"))
    # proven by a token mailed to it; accounts from before verification start unverified
    email_verified: Mapped[bool] = mapped_column(server_default=text("false"))
    # set when the owner (or an admin) deletes the account: hidden at once (is_active is
    # false too), the rows go in a job, the user row last (its name and email are free then)
    deleted_at: Mapped[datetime | None] = mapped_column(TZ)
    # Counters kept by the service functions that change them, in the same transaction.
    post_count: Mapped[int] = mapped_column(server_default="0")
    follower_count: Mapped[int] = mapped_column(server_default="0")
    following_count: Mapped[int] = mapped_column(server_default="0")
    # Bumped by every follow of this account, in the follow's statement: a new post's
    # statement tells by it whether the followers it read in its snapshot are all there
    # are once it holds the author's row (app/posts/service.py _CREATE).
    follows_version: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # Bumped on every profile change; the ETag is derived from it.
    version: Mapped[int] = mapped_column(server_default="1")
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())

    __table_args__ = (
        # The database is the last word on uniqueness, case-insensitively.
        Index("uq_users_username_lower", func.lower(username), unique=True),
        Index("uq_users_email_lower", func.lower(email), unique=True),
        # prefix search on ?q= (text_pattern_ops serves LIKE 'abc%')
        Index("ix_users_username_prefix", text("lower(username) text_pattern_ops")),
        Index("ix_users_display_name_prefix", text("lower(display_name) text_pattern_ops")),
        CheckConstraint("role IN ('user', 'admin')", name="role"),
        CheckConstraint("post_count >= 0 AND follower_count >= 0 AND following_count >= 0", name="counts"),
    )

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN.value

    def __repr__(self) -> str:
        return f"<User {self.id} {self.username}>"


class Follow(db.Model):
    """follower_id follows followed_id."""

    __tablename__ = "follows"

    follower_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    followed_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())

    __table_args__ = (
        CheckConstraint("follower_id <> followed_id", name="not_self"),
        # followers of X, newest first (the PK serves "whom does X follow")
        Index("ix_follows_followed_created", "followed_id", text("created_at DESC"), text("follower_id DESC")),
        Index("ix_follows_follower_created", "follower_id", text("created_at DESC"), text("followed_id DESC")),
    )
