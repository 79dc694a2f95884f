"""users, posts, follows

Revision ID: 0001
Revises:
Create Date: 2026-11-29 03:22:34.745528

"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("username", sa.String(length=30), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("display_name", sa.String(length=50), nullable=False),
        sa.Column("bio", sa.Text(), server_default="", nullable=False),
        sa.Column("role", sa.String(length=10), server_default="user", nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("post_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("follower_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("following_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("role IN ('user', 'admin')", name=op.f("ck_users_role")),
        sa.CheckConstraint(
            "post_count >= 0 AND follower_count >= 0 AND following_count >= 0", name=op.f("ck_users_counts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        # text_pattern_ops: serves `lower(x) LIKE 'prefix%'` whatever the collation
        batch_op.create_index("ix_users_display_name_prefix", [sa.text("lower(display_name) text_pattern_ops")])
        batch_op.create_index("ix_users_username_prefix", [sa.text("lower(username) text_pattern_ops")])
        batch_op.create_index("uq_users_email_lower", [sa.literal_column("lower(email)")], unique=True)
        batch_op.create_index("uq_users_username_lower", [sa.literal_column("lower(username)")], unique=True)

    op.create_table(
        "follows",
        sa.Column("follower_id", sa.BigInteger(), nullable=False),
        sa.Column("followed_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("follower_id <> followed_id", name=op.f("ck_follows_not_self")),
        sa.ForeignKeyConstraint(
            ["followed_id"], ["users.id"], name=op.f("fk_follows_followed_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["follower_id"], ["users.id"], name=op.f("fk_follows_follower_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("follower_id", "followed_id", name=op.f("pk_follows")),
    )
    with op.batch_alter_table("follows", schema=None) as batch_op:
        batch_op.create_index(
            "ix_follows_followed_created",
            ["followed_id", sa.literal_column("created_at DESC"), sa.literal_column("follower_id DESC")],
            unique=False,
        )
        batch_op.create_index(
            "ix_follows_follower_created",
            ["follower_id", sa.literal_column("created_at DESC"), sa.literal_column("followed_id DESC")],
            unique=False,
        )

    op.create_table(
        "posts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("author_id", sa.BigInteger(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column(
            "search",
            postgresql.TSVECTOR(),
            sa.Computed(
                "setweight(to_tsvector('english', coalesce(title, '')), 'A') || setweight(to_tsvector('english', coalesce(body, '')), 'B')",
                persisted=True,
            ),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["author_id"], ["users.id"], name=op.f("fk_posts_author_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_posts")),
    )
    with op.batch_alter_table("posts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_posts_author_created",
            ["author_id", sa.literal_column("created_at DESC"), sa.literal_column("id DESC")],
            unique=False,
        )
        batch_op.create_index(
            "ix_posts_created", [sa.literal_column("created_at DESC"), sa.literal_column("id DESC")], unique=False
        )
        batch_op.create_index("ix_posts_search", ["search"], unique=False, postgresql_using="gin")


def downgrade():
    # indexes and constraints go with their tables
    op.drop_table("posts")
    op.drop_table("follows")
    op.drop_table("users")
