"""bucket_aggregates fillfactor 70 on PostgreSQL

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 11:00:00

Ingestion updates each bucket's row once per reading it adds (every 5 s for a 60-s bucket: 12
updates). With full pages PostgreSQL cannot update a row in place (a HOT update needs room on
its page), so each update also adds an index entry and leaves a dead row behind: measured with
``bench_ingestion.py``'s fleet, 10% of updates were HOT at the default fillfactor (100) and the
table grew to 3.5x its live size; at 70, 89% were HOT, the table stayed at its live size, and
the aggregate upsert cost 10-20% less server CPU. Only new pages get the room (existing ones
are not rewritten). SQLite and SQL Server have no such setting for this: nothing to do there.
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("ALTER TABLE bucket_aggregates SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("ALTER TABLE bucket_aggregates RESET (fillfactor)")
