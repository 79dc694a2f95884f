"""no JIT compilation for this database's queries

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 06:30:00

PostgreSQL compiles a query whose estimated cost passes jit_above_cost. The app's
queries are short (a page, a row), but a prepared statement's generic plan estimates a
LIMIT given as a parameter at a tenth of the table, so at millions of posts a feed page
costing half a millisecond was compiled for ten. Set on the database, so it holds
behind PgBouncer too. Changing a database's settings needs its owner: without that
right the migration leaves the setting as it is and says so.
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def set_jit(value: str) -> str:
    return f"""
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET jit = {value}', current_database());
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'jit left as it is: only the database owner can set it (ALTER DATABASE ... SET jit = {value})';
END $$
"""


def upgrade():
    op.execute(set_jit("off"))


def downgrade():
    op.execute(set_jit("DEFAULT"))
