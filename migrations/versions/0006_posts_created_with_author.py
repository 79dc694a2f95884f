"""the newest-first index of posts carries each post's author

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 06:00:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

NEWEST_FIRST = [sa.text("created_at DESC"), sa.text("id DESC")]


def upgrade():
    # built beside the old index and swapped in without holding off writes to posts
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_posts_created_with_author",
            "posts",
            NEWEST_FIRST,
            postgresql_include=["author_id"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.drop_index("ix_posts_created", table_name="posts", postgresql_concurrently=True, if_exists=True)


def downgrade():
    with op.get_context().autocommit_block():
        op.create_index("ix_posts_created", "posts", NEWEST_FIRST, postgresql_concurrently=True, if_not_exists=True)
        op.drop_index("ix_posts_created_with_author", table_name="posts", postgresql_concurrently=True, if_exists=True)
