"""timestamps as DATETIME2(6) on SQL Server

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 10:00:00

Before this revision every timestamp column was ``DATETIME`` on SQL Server, which rounds to
1/300 s: a reading redelivered with a sub-second time no longer equalled its stored copy, so the
insert-if-absent found no match, violated the key, and failed the whole Event Hubs batch.

Why a new revision *and* an edited 0001: deployments already at 0001 have ``DATETIME`` columns
and need an ``ALTER``; Alembic never re-runs 0001 for them, so only a new revision reaches them.
0001 was also changed to create ``DATETIME2(6)`` so that the install script (``db sql``) never
holds the deprecated type. On a database that 0001 created that way, the statements below run on
empty tables of the right type: they change nothing and cost nothing. That keeps one path for
every SQL Server database rather than a branch on what the catalog says, which offline scripts
could not evaluate anyway.

SQL Server refuses ``ALTER COLUMN`` on a column that a primary key or an index uses, so those are
dropped first and recreated after (the primary keys stay clustered, as they were created).
Converting is a size-of-data operation on ``readings`` and ``predictions``: run the upgrade in a
quiet hour on a large database. Values stored before keep what ``DATETIME`` had kept (their
sub-millisecond part is lost already; SQL Server 2016+ converts the exact 1/300-s tick).

SQLite and PostgreSQL: nothing to do (``DateTime`` keeps microseconds there).
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mssql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DATETIME2 = mssql.DATETIME2(precision=6)

# (table, column, nullable): every timestamp column that 0001 created.
COLUMNS = [
    ("dead_letters", "created_at", False),
    ("model_sets", "train_start", False),
    ("model_sets", "train_end", False),
    ("model_sets", "created_at", False),
    ("predictions", "bucket_start", False),
    ("readings", "ts", False),
    ("runs", "window_start", False),
    ("runs", "window_end", False),
    ("runs", "created_at", False),
    ("runs", "submitted_at", True),
    ("runs", "finished_at", True),
    ("runs", "updated_at", False),
    ("models", "train_start", False),
    ("models", "train_end", False),
    ("models", "created_at", False),
    ("run_chunks", "recorded_at", True),
    ("active_models", "activated_at", False),
]

# Primary keys and indexes that hold one of those columns: (table, name, columns).
PRIMARY_KEYS = [
    ("readings", "pk_readings", ["ts", "device", "sensor"]),
    ("predictions", "pk_predictions", ["run_id", "device", "sensor", "bucket_start"]),
]
INDEXES = [
    (
        "predictions",
        "ix_predictions_device_sensor_bucket_start",
        ["device", "sensor", "bucket_start"],
    ),
    ("runs", "ix_runs_status_created_at", ["status", "created_at"]),
    ("runs", "ix_runs_window_end", ["window_end"]),
]


def _retype(old: sa.types.TypeEngine, new: sa.types.TypeEngine) -> None:
    if op.get_context().dialect.name != "mssql":
        return
    for table, name, _ in INDEXES:
        op.drop_index(name, table_name=table)
    for table, name, _ in PRIMARY_KEYS:
        op.drop_constraint(name, table, type_="primary")
    for table, column, nullable in COLUMNS:
        op.alter_column(table, column, type_=new, existing_type=old, existing_nullable=nullable)
    for table, name, columns in PRIMARY_KEYS:
        op.create_primary_key(name, table, columns)
    for table, name, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)


def upgrade() -> None:
    _retype(mssql.DATETIME(), DATETIME2)


def downgrade() -> None:
    _retype(DATETIME2, mssql.DATETIME())
