"""finer statistics on posts.search, so a rare word's search is planned as one

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 10:50:00

PostgreSQL estimates how many posts hold a word from the words ANALYZE found most often
in its sample; a word outside that list is guessed from the least frequent word kept.
At the default target the list is short and the guess for a rare word is high enough
that walking the newest-first index for a page of matches looks as cheap as reading
the word's few posts from the full-text index: a rare word was then searched by a
parallel worker, or by a walk of most of the table. A longer list brings the guess down
to the rare words' real counts. ANALYZE samples 300 rows per unit of the target,
whatever the table's size.
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SEARCH_STATISTICS = 1000


def upgrade():
    op.execute(f"ALTER TABLE posts ALTER COLUMN search SET STATISTICS {SEARCH_STATISTICS}")
    op.execute("ANALYZE posts (search)")


def downgrade():
    op.execute("ALTER TABLE posts ALTER COLUMN search SET STATISTICS -1")
    op.execute("ANALYZE posts (search)")
