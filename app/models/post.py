"""Posts, with a generated full-text search vector."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Computed, ForeignKey, Identity, Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import TZ, db
from app.models.user import User

SEARCH_VECTOR = (
    "setweight(to_tsvector('english', coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english', coalesce(body, '')), 'B')"
)


class Post(db.Model):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    # the id a bulk import gave the post, unique per author: re-importing a file is a no-op
    external_id: Mapped[str | None] = mapped_column(String(100))
    search: Mapped[str] = mapped_column(TSVECTOR, Computed(SEARCH_VECTOR, persisted=True), deferred=True)
    version: Mapped[int] = mapped_column(server_default="1")
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())

    author: Mapped[User] = relationship(lazy="raise")

    __table_args__ = (
        # keyset pages: newest first overall (with the author: a heavy reader's feed reads
        # it alone, posts.service._feed_query), per author
        Index(
            "ix_posts_created_with_author", text("created_at DESC"), text("id DESC"), postgresql_include=["author_id"]
        ),
        Index("ix_posts_author_created", "author_id", text("created_at DESC"), text("id DESC")),
        Index("ix_posts_search", "search", postgresql_using="gin"),
        Index(
            "uq_posts_author_external",
            "author_id",
            "external_id",
            unique=True,
            postgresql_where=text("external_id IS NOT NULL"),
        ),
    )

    def __repr__(self) -> str:
        return f"<Post {self.id} by {self.author_id}>"
