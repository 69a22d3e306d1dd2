"""alert outbox indexes

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 11:05:00

Two reads of the alert outbox that grow with history: retention's batched delete of old
notifications (``shared.retention``, oldest ``created_at`` first, and the notification list ordered
by it), and recording's search for announced events of a chunk's sensors that a re-run withdrew
(``shared.alerts.outbox._withdrawn``, joined on device and sensor). Indexes only.
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alert_outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_outbox_created_at"), ["created_at"])
        batch_op.create_index(
            batch_op.f("ix_alert_outbox_device_sensor_state"), ["device", "sensor", "state"]
        )


def downgrade() -> None:
    with op.batch_alter_table("alert_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alert_outbox_device_sensor_state"))
        batch_op.drop_index(batch_op.f("ix_alert_outbox_created_at"))
