"""anomaly events

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 10:00:00

The ``anomaly_events`` table (``shared.events``): one row per incident of one sensor, keyed by a
stable id derived from device, sensor and onset; and a partial (filtered) index of the flagged
predictions, which events are recomputed from. Timestamps are ``DATETIME2(6)`` on SQL Server
from the start, like every other timestamp column. Existing predictions are not turned into
events here: events appear as chunks are recorded (the first chunk of a sensor after the upgrade
also picks up its flags of the preceding ``EVENT_GAP_BUCKETS`` buckets).
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mssql

# A frozen copy of shared.db.schema.Timestamp (migrations never import the live schema).
Timestamp = sa.DateTime().with_variant(mssql.DATETIME2(precision=6), "mssql")

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "anomaly_events",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("sensor", sa.String(length=64), nullable=False),
        sa.Column("start", Timestamp, nullable=False),
        sa.Column("end", Timestamp, nullable=False),
        sa.Column("last_bucket_start", Timestamp, nullable=False),
        sa.Column("n_buckets", sa.Integer(), nullable=False),
        sa.Column("onset_score", sa.Float(), nullable=False),
        sa.Column("peak_score", sa.Float(), nullable=False),
        sa.Column("peak_bucket", Timestamp, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("first_run_id", sa.String(length=64), nullable=False),
        sa.Column("last_run_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_anomaly_events")),
    )
    with op.batch_alter_table("anomaly_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_anomaly_events_device_sensor_start"),
            ["device", "sensor", "start"],
            unique=True,
        )
        batch_op.create_index(batch_op.f("ix_anomaly_events_start"), ["start"], unique=False)
    # Flagged predictions only, for the events recompute; the predicate as the queries write it.
    op.create_index(
        "ix_predictions_flagged",
        "predictions",
        ["device", "sensor", "bucket_start"],
        unique=False,
        sqlite_where=sa.text("is_anomaly = 1"),
        postgresql_where=sa.text("is_anomaly = true"),
        mssql_where=sa.text("is_anomaly = 1"),
    )


def downgrade() -> None:
    op.drop_index("ix_predictions_flagged", table_name="predictions")
    with op.batch_alter_table("anomaly_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_anomaly_events_start"))
        batch_op.drop_index(batch_op.f("ix_anomaly_events_device_sensor_start"))
    op.drop_table("anomaly_events")
