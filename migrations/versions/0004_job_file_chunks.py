"""job files in chunks, result retention, unfinished jobs per owner

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:00:00

"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CHUNK = 1024 * 1024  # as app.jobs.files.CHUNK_BYTES when this was written


def upgrade():
    op.create_table(
        "job_file_chunks",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id", "role"],
            ["job_files.job_id", "job_files.role"],
            name=op.f("fk_job_file_chunks_job_id_job_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "role", "seq", name=op.f("pk_job_file_chunks")),
    )
    # stored as they come, not compressed: pglz spends seconds of the server's CPU on a large
    # upload (and keeps text that does not shrink by a quarter uncompressed anyway)
    op.execute("ALTER TABLE job_file_chunks ALTER COLUMN data SET STORAGE EXTERNAL")
    op.add_column("job_files", sa.Column("size", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("job_files", sa.Column("purged_at", postgresql.TIMESTAMP(timezone=True), nullable=True))
    op.execute(
        sa.text(
            "INSERT INTO job_file_chunks (job_id, role, seq, data) "
            "SELECT job_id, role, n, substring(content FROM n * :chunk + 1 FOR :chunk) "
            "FROM job_files, generate_series(0, (length(content) - 1) / :chunk) AS n "
            "WHERE length(content) > 0"
        ).bindparams(chunk=CHUNK)
    )
    op.execute("UPDATE job_files SET size = length(content)")
    op.drop_column("job_files", "content")
    op.create_index(
        "ix_jobs_owner_unfinished",
        "jobs",
        ["owner_id", "kind"],
        unique=False,
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )


def downgrade():
    op.drop_index(
        "ix_jobs_owner_unfinished", table_name="jobs", postgresql_where=sa.text("status IN ('queued', 'running')")
    )
    op.add_column("job_files", sa.Column("content", sa.LargeBinary(), nullable=True))
    # a purged result has no bytes left: without the row, the old code answers 404
    op.execute("DELETE FROM job_files WHERE purged_at IS NOT NULL")
    op.execute(
        "UPDATE job_files f SET content = coalesce("
        "(SELECT string_agg(c.data, ''::bytea ORDER BY c.seq) FROM job_file_chunks c "
        "WHERE c.job_id = f.job_id AND c.role = f.role), ''::bytea)"
    )
    op.alter_column("job_files", "content", nullable=False)
    op.drop_column("job_files", "purged_at")
    op.drop_column("job_files", "size")
    op.drop_table("job_file_chunks")
