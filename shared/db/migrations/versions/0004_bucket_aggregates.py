"""bucket aggregates

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 09:00:00

Per-bucket aggregates of readings (count, sum, min, max, sum of squares per bucket width,
bucket start, device and sensor), maintained by ingestion from the readings it actually inserts,
and the table of bucket widths that are maintained. Backfilled here from the existing readings
at one width: the ``bucket_seconds`` attribute of the Alembic config (``shared.db.migrate``
passes the app's ``BUCKET_SECONDS``; ``env.py`` reads it from the settings otherwise), else 60.
The bucket start is written per engine exactly as ``shared.db.dialects.bucket_start_of`` writes
it (migrations never import the live code; a test checks that both agree).
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mssql

# A frozen copy of shared.db.schema.Timestamp (migrations never import the live schema).
Timestamp = sa.DateTime().with_variant(mssql.DATETIME2(precision=6), "mssql")

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Whole seconds since the epoch of readings.ts, then the bucket's start, per engine.
_EPOCH = {
    "sqlite": "CAST(strftime('%s', substr(ts, 1, 19)) AS INTEGER)",
    "postgresql": "CAST(floor(extract(epoch FROM ts)) AS BIGINT)",
    "mssql": "DATEDIFF_BIG(second, CAST('1970-01-01' AS DATETIME2), ts)",
}
_START = {
    "sqlite": "(strftime('%Y-%m-%d %H:%M:%S', {b}, 'unixepoch') || '.000000')",
    "postgresql": (
        "(CAST('1970-01-01' AS TIMESTAMP WITHOUT TIME ZONE) + "
        "CAST({b} AS DOUBLE PRECISION) * INTERVAL '1 second')"
    ),
    "mssql": (
        "DATEADD(second, CAST({b} % 86400 AS INT), "
        "DATEADD(day, CAST({b} / 86400 AS INT), CAST('1970-01-01' AS DATETIME2(6))))"
    ),
}
_NOW = {
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f000', 'now')",
    "postgresql": "CAST(now() AT TIME ZONE 'UTC' AS TIMESTAMP WITHOUT TIME ZONE)",
    "mssql": "SYSUTCDATETIME()",
}


def _bucket_seconds() -> int:
    seconds = int(op.get_context().config.attributes.get("bucket_seconds", 60))
    if not 1 <= seconds <= 86_400:
        raise ValueError(f"BUCKET_SECONDS={seconds} is outside 1..86400")
    return seconds


def upgrade() -> None:
    op.create_table(
        "bucket_aggregates",
        sa.Column("bucket_seconds", sa.Integer(), nullable=False),
        sa.Column("bucket_start", Timestamp, nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("sensor", sa.String(length=64), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.Column("sum_sq", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint(
            "bucket_seconds", "bucket_start", "device", "sensor", name=op.f("pk_bucket_aggregates")
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "aggregate_widths",
        sa.Column("bucket_seconds", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("built_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("bucket_seconds", name=op.f("pk_aggregate_widths")),
    )
    # Backfill: the existing readings, grouped once; from here on ingestion keeps them.
    dialect = op.get_context().dialect.name
    seconds = _bucket_seconds()
    bucket = f"({_EPOCH[dialect]} / {seconds} * {seconds})"
    start = _START[dialect].format(b=bucket)
    op.execute(
        "INSERT INTO bucket_aggregates "
        "(bucket_seconds, bucket_start, device, sensor, count, sum, min, max, sum_sq) "
        f"SELECT {seconds}, {start}, device, sensor, COUNT(*), SUM(value), MIN(value), "
        f"MAX(value), SUM(value * value) FROM readings GROUP BY {start}, device, sensor"
    )
    op.execute(
        f"INSERT INTO aggregate_widths (bucket_seconds, built_at) VALUES ({seconds}, {_NOW[dialect]})"
    )


def downgrade() -> None:
    op.drop_table("aggregate_widths")
    op.drop_table("bucket_aggregates")
