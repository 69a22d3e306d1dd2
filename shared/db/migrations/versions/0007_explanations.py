"""explanations

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 11:00:00

Explanations of anomalies (``scoring.explain``): nullable columns on ``predictions`` (the band
the bucket's mean was expected in, and why a flagged bucket was flagged, as JSON text) and on
``anomaly_events`` (the explanation of the event's peak bucket). Nullable columns only: existing
rows keep null there (predictions scored before have no explanation, and say so by its absence).
"""

from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expected_low", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("expected_high", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("explanation", sa.Text(), nullable=True))
    with op.batch_alter_table("anomaly_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("explanation", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("anomaly_events", schema=None) as batch_op:
        batch_op.drop_column("explanation")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_column("explanation")
        batch_op.drop_column("expected_high")
        batch_op.drop_column("expected_low")
