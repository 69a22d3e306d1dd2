"""training jobs

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 09:00:00

Training runs on the executors (``shared.training``): ``training_jobs`` (one per training key
and attempt) and ``training_chunks`` (each chunk's registration, once). New tables only;
timestamps are ``DATETIME2(6)`` on SQL Server like every other timestamp column.
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mssql

# A frozen copy of shared.db.schema.Timestamp (migrations never import the live schema).
Timestamp = sa.DateTime().with_variant(mssql.DATETIME2(precision=6), "mssql")

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_jobs",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("training_key", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("window_start", Timestamp, nullable=False),
        sa.Column("window_end", Timestamp, nullable=False),
        sa.Column("estimator", sa.String(length=200), nullable=False),
        sa.Column("executor", sa.String(length=16), nullable=False),
        sa.Column("backend_job_id", sa.String(length=255), nullable=True),
        sa.Column("job_url", sa.String(length=1000), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n_sensors", sa.Integer(), nullable=False),
        sa.Column("n_chunks", sa.Integer(), nullable=False),
        sa.Column("n_chunks_done", sa.Integer(), nullable=False),
        sa.Column("n_chunks_failed", sa.Integer(), nullable=False),
        sa.Column("n_activated", sa.Integer(), nullable=False),
        sa.Column("n_kept", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("submitted_at", Timestamp, nullable=True),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_training_jobs")),
        sa.UniqueConstraint(
            "training_key", "attempt", name=op.f("uq_training_jobs_training_key_attempt")
        ),
    )
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_jobs_status"), ["status"])
    op.create_table(
        "training_chunks",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("chunk_id", sa.String(length=64), nullable=False),
        sa.Column("blob_path", sa.String(length=512), nullable=False),
        sa.Column("n_sensors", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("etag", sa.String(length=128), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("done_at", Timestamp, nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["training_jobs.job_id"],
            name=op.f("fk_training_chunks_job_id_training_jobs"),
        ),
        sa.PrimaryKeyConstraint("job_id", "chunk_id", name=op.f("pk_training_chunks")),
    )


def downgrade() -> None:
    op.drop_table("training_chunks")
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_jobs_status"))
    op.drop_table("training_jobs")
