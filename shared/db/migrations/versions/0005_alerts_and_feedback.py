"""alerts and feedback

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 07:00:00

Alert rules and the alert outbox (``shared.alerts``), operator feedback on anomaly events and
per-sensor sensitivity overrides (``shared.feedback``). New tables only; timestamps are
``DATETIME2(6)`` on SQL Server like every other timestamp column.
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mssql

# A frozen copy of shared.db.schema.Timestamp (migrations never import the live schema).
Timestamp = sa.DateTime().with_variant(mssql.DATETIME2(precision=6), "mssql")

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _id(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(length=64), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("rule_id", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        _id("device", True),
        _id("sensor", True),
        sa.Column("min_score", sa.Float(), nullable=True),
        sa.Column("min_duration_minutes", sa.Float(), nullable=True),
        sa.Column("quiet_start", sa.String(length=5), nullable=True),
        sa.Column("quiet_end", sa.String(length=5), nullable=True),
        sa.Column("muted_until", Timestamp, nullable=True),
        sa.Column("mute_reason", sa.String(length=500), nullable=True),
        sa.Column("comment", sa.String(length=500), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("rule_id", name=op.f("pk_alert_rules")),
    )
    op.create_table(
        "alert_outbox",
        sa.Column("notification_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        _id("device"),
        _id("sensor"),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", Timestamp, nullable=False),
        sa.Column("claimed_until", Timestamp, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("sent_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("notification_id", name=op.f("pk_alert_outbox")),
    )
    with op.batch_alter_table("alert_outbox", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_alert_outbox_status_next_attempt_at"), ["status", "next_attempt_at"]
        )
        batch_op.create_index(batch_op.f("ix_alert_outbox_run_id"), ["run_id"])
        batch_op.create_index(batch_op.f("ix_alert_outbox_event_id_target"), ["event_id", "target"])
    op.create_table(
        "anomaly_feedback",
        sa.Column("feedback_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        _id("device"),
        _id("sensor"),
        sa.Column("event_start", Timestamp, nullable=False),
        sa.Column("event_end", Timestamp, nullable=False),
        sa.Column("peak_score", sa.Float(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("author", sa.String(length=200), nullable=True),
        sa.Column("span_start", Timestamp, nullable=False),
        sa.Column("span_end", Timestamp, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("feedback_id", name=op.f("pk_anomaly_feedback")),
    )
    with op.batch_alter_table("anomaly_feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_anomaly_feedback_event_id"), ["event_id"])
        batch_op.create_index(
            batch_op.f("ix_anomaly_feedback_device_sensor_span_start"),
            ["device", "sensor", "span_start"],
        )
        batch_op.create_index(batch_op.f("ix_anomaly_feedback_created_at"), ["created_at"])
    op.create_table(
        "sensor_sensitivity",
        _id("device"),
        _id("sensor"),
        sa.Column("sensitivity", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=True),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("device", "sensor", name="pk_sensor_sensitivity"),
    )


def downgrade() -> None:
    op.drop_table("sensor_sensitivity")
    with op.batch_alter_table("anomaly_feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_anomaly_feedback_created_at"))
        batch_op.drop_index(batch_op.f("ix_anomaly_feedback_device_sensor_span_start"))
        batch_op.drop_index(batch_op.f("ix_anomaly_feedback_event_id"))
    op.drop_table("anomaly_feedback")
    with op.batch_alter_table("alert_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alert_outbox_event_id_target"))
        batch_op.drop_index(batch_op.f("ix_alert_outbox_run_id"))
        batch_op.drop_index(batch_op.f("ix_alert_outbox_status_next_attempt_at"))
    op.drop_table("alert_outbox")
    op.drop_table("alert_rules")
