"""Single-use tokens mailed to a user, and the outbox of mail for the worker to send."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Identity, Index, LargeBinary, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import TZ, db


class TokenPurpose(enum.StrEnum):
    RESET = "reset"
    VERIFY = "verify"


class AccountToken(db.Model):
    """A token mailed to a user, kept as its SHA-256 digest: the token itself is only in
    the mail. Used once (used_at), before expires_at."""

    __tablename__ = "account_tokens"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    purpose: Mapped[str] = mapped_column(String(8))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # the address a verification proves (the account's, or the one it changes to)
    new_email: Mapped[str | None] = mapped_column(String(254))
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(TZ)
    used_at: Mapped[datetime | None] = mapped_column(TZ)

    __table_args__ = (
        Index("uq_account_tokens_digest", "digest", unique=True),
        Index("ix_account_tokens_user_unused", "user_id", "purpose", postgresql_where=text("used_at IS NULL")),
        CheckConstraint("purpose IN ('reset', 'verify')", name="purpose"),
    )


class OutboxMail(db.Model):
    """A mail to send, written in the transaction that decided to send it; a worker sends
    it and marks it sent (and drops its bodies, which may hold a token)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    to_address: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(200))
    text_body: Mapped[str] = mapped_column(Text)
    html_body: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(server_default="0")
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(TZ)

    __table_args__ = (
        Index("ix_outbox_user", "user_id"),
        Index("ix_outbox_unsent", "created_at", postgresql_where=text("sent_at IS NULL")),
    )
