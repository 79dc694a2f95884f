"""users.follows_version: bumped by every follow of the account

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 12:45:00

A new post's statement reads the author's followers in its own snapshot; comparing the
version it saw there with the one on the row it then locked tells whether a follow
committed in between (docs/architecture.md). A column with a constant default is added
without rewriting the table.
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("users", sa.Column("follows_version", sa.BigInteger(), server_default="0", nullable=False))


def downgrade():
    op.drop_column("users", "follows_version")
