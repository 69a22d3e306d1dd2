"""Per-bucket aggregates of readings, kept as readings arrive.

Runs and training read one row per sensor and bucket from ``bucket_aggregates`` (count, sum,
min, max, sum of squares) instead of grouping raw readings, so reading a window costs the same
whether sensors report every second or every minute.

Exactness rests on one rule: **only readings actually inserted into ``readings`` feed the
aggregates, in the same transaction.** Ingestion (``shared.ingestion.store``) learns which rows
it inserted from the database itself (PostgreSQL: ``INSERT ... ON CONFLICT DO NOTHING
RETURNING`` feeding the aggregate upsert in one statement; SQLite: the same ``RETURNING``;
SQL Server: keys looked up, then a plain ``INSERT`` that fails rather than skip if another
writer got there first, and the transaction is re-run). So a redelivered reading adds nothing,
and a late reading, whenever it comes, adds itself to its bucket's row: later runs see it.

Bucket width. Every row records its ``bucket_seconds``; ``aggregate_widths`` lists the widths
that are complete and maintained (migration 0004 backfills ``BUCKET_SECONDS`` from the readings
present). Ingestion maintains every listed width; features for a width not listed raise
:class:`AggregatesNotBuilt` rather than return partial buckets. Changing ``BUCKET_SECONDS``
therefore takes ``python -m shared.cli aggregates rebuild`` (:func:`rebuild`), which builds
the new width from readings and lists it; ``--drop-others`` stops maintaining the old one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import Column, Connection, and_, delete, func, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite

from shared.clock import utcnow
from shared.db.dialects import bucket_start_of
from shared.db.schema import aggregate_widths, bucket_aggregates, readings

EPOCH = datetime(1970, 1, 1)
KEY = ("bucket_seconds", "bucket_start", "device", "sensor")
VALUES = ("count", "sum", "min", "max", "sum_sq")
COLUMNS = (*KEY, *VALUES)
SECOND = timedelta(seconds=1)


class AggregatesNotBuilt(RuntimeError):
    """Features were asked for at a bucket width whose aggregates are not built."""


def widths(conn: Connection) -> list[int]:
    """The bucket widths whose aggregates are maintained."""
    return sorted(int(w) for (w,) in conn.execute(select(aggregate_widths.c.bucket_seconds)).all())


def check_width(conn: Connection, bucket_seconds: int) -> None:
    """Raise :class:`AggregatesNotBuilt` unless aggregates of ``bucket_seconds`` are built."""
    built = conn.execute(
        select(aggregate_widths.c.bucket_seconds).where(
            aggregate_widths.c.bucket_seconds == int(bucket_seconds)
        )
    ).first()
    if built is None:
        listed = widths(conn)
        raise AggregatesNotBuilt(
            f"bucket aggregates are built for BUCKET_SECONDS in {listed or 'none'}, not "
            f"{int(bucket_seconds)}: run `python -m shared.cli aggregates rebuild` (it builds "
            "them from readings) or set BUCKET_SECONDS back"
        )


def bucket_floor(ts: datetime, bucket_seconds: int) -> datetime:
    """Start of the epoch-aligned bucket holding ``ts`` (exact for sub-second timestamps)."""
    seconds = (ts - EPOCH) // SECOND
    return EPOCH + SECOND * (seconds // bucket_seconds * bucket_seconds)


def group_rows(
    rows: Iterable[tuple[datetime, str, str, float]], bucket_widths: Sequence[int]
) -> list[tuple]:
    """(ts, device, sensor, value) rows as aggregate rows (``COLUMNS`` order), in key order."""
    groups: dict[tuple, list] = {}
    for ts, device, sensor, value in rows:
        v = float(value)
        for w in bucket_widths:
            key = (w, bucket_floor(ts, w), device, sensor)
            acc = groups.get(key)
            if acc is None:
                groups[key] = [1, v, v, v, v * v]
            else:
                acc[0] += 1
                acc[1] += v
                acc[2] = min(acc[2], v)
                acc[3] = max(acc[3], v)
                acc[4] += v * v
    return [(*key, *groups[key]) for key in sorted(groups)]


def accumulate_statement(dialect_name: str):
    """An executemany-able statement adding one aggregate row (``COLUMNS``) to its bucket.

    SQLite and PostgreSQL: ``INSERT ... ON CONFLICT DO UPDATE`` adding counts and sums and
    keeping the extremes. SQL Server has no ON CONFLICT: a ``MERGE`` with ``HOLDLOCK``, so two
    transactions adding to the same new bucket serialise instead of both inserting it.
    """
    t = bucket_aggregates
    if dialect_name in ("sqlite", "postgresql"):
        stmt = (sqlite if dialect_name == "sqlite" else postgresql).insert(t)
        ex = stmt.excluded
        lo, hi = (func.min, func.max) if dialect_name == "sqlite" else (func.least, func.greatest)
        return stmt.on_conflict_do_update(
            index_elements=list(KEY),
            set_={
                "count": t.c.count + ex["count"],
                "sum": t.c.sum + ex["sum"],
                "min": lo(t.c.min, ex["min"]),
                "max": hi(t.c.max, ex["max"]),
                "sum_sq": t.c.sum_sq + ex["sum_sq"],
            },
        )
    params = ", ".join(f":{c} AS [{c}]" for c in COLUMNS)
    on = " AND ".join(f"t.[{c}] = s.[{c}]" for c in KEY)
    return text(
        f"MERGE bucket_aggregates WITH (HOLDLOCK) AS t USING (SELECT {params}) AS s ON {on} "
        "WHEN MATCHED THEN UPDATE SET t.[count] = t.[count] + s.[count], "
        "t.[sum] = t.[sum] + s.[sum], "
        "t.[min] = CASE WHEN s.[min] < t.[min] THEN s.[min] ELSE t.[min] END, "
        "t.[max] = CASE WHEN s.[max] > t.[max] THEN s.[max] ELSE t.[max] END, "
        "t.[sum_sq] = t.[sum_sq] + s.[sum_sq] "
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(f'[{c}]' for c in COLUMNS)}) "
        f"VALUES ({', '.join(f's.[{c}]' for c in COLUMNS)});"
    )


def accumulate(conn: Connection, rows: Sequence[tuple]) -> None:
    """Add aggregate rows (``COLUMNS`` order, key-sorted, key-unique) to their buckets."""
    if rows:
        conn.execute(
            accumulate_statement(conn.dialect.name),
            [dict(zip(COLUMNS, row, strict=True)) for row in rows],
        )


def aggregate_select(source, bucket_seconds):
    """SELECT of aggregate rows (``COLUMNS``) grouping ``source``'s ts/device/sensor/value
    columns at ``bucket_seconds`` (a literal width, or a column of widths), in key order."""
    start = bucket_start_of(source.c.ts, bucket_seconds)
    width = bucket_seconds
    value = source.c.value
    # A column of widths is grouped by; a literal must not be (SQL Server refuses constants).
    by = (width,) if isinstance(width, Column) else ()
    return (
        select(
            width,
            start,
            source.c.device,
            source.c.sensor,
            func.count(),
            func.sum(value),
            func.min(value),
            func.max(value),
            func.sum(value * value),
        )
        .group_by(*by, start, source.c.device, source.c.sensor)
        .order_by(*by, start, source.c.device, source.c.sensor)
    )


def _lock_aggregates(conn: Connection) -> None:
    """Keep ingestion from adding to the aggregates while they are rebuilt (it waits)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE bucket_aggregates IN SHARE ROW EXCLUSIVE MODE"))
    elif conn.dialect.name == "mssql":
        conn.execute(text("SELECT TOP 0 1 FROM bucket_aggregates WITH (TABLOCKX, HOLDLOCK)"))
    # SQLite: the DELETE below takes the database's write lock; writers are serialised.


def rebuild(
    conn: Connection,
    bucket_seconds: int,
    start: datetime | None = None,
    end: datetime | None = None,
) -> int:
    """Rebuild the aggregates of ``bucket_seconds`` from readings, and list the width as built.

    Optionally only the buckets overlapping ``[start, end)`` (widened to whole buckets), e.g.
    after readings were written by something that does not maintain aggregates. Run it in one
    transaction (``engine.begin()``): ingestion waits on the lock, so a reading is counted
    either by the rebuild or by its own insert, never by both. Returns the rows written.
    """
    w = int(bucket_seconds)
    _lock_aggregates(conn)
    t = bucket_aggregates
    rows_of = [t.c.bucket_seconds == w]
    source = select(readings.c.ts, readings.c.device, readings.c.sensor, readings.c.value)
    if start is not None:
        lo = bucket_floor(start, w)
        rows_of.append(t.c.bucket_start >= lo)
        source = source.where(readings.c.ts >= lo)
    if end is not None:
        hi = bucket_floor(end, w)
        hi = hi if hi == end else hi + timedelta(seconds=w)
        rows_of.append(t.c.bucket_start < hi)
        source = source.where(readings.c.ts < hi)
    conn.execute(delete(t).where(*rows_of))
    grouped = aggregate_select(source.subquery("r"), _literal_width(w))
    conn.execute(insert(t).from_select(list(COLUMNS), grouped))
    # Counted, not the rowcount: drivers do not all report one for INSERT ... SELECT.
    written = conn.execute(select(func.count()).select_from(t).where(*rows_of)).scalar_one()
    listed = conn.execute(
        select(aggregate_widths.c.bucket_seconds).where(aggregate_widths.c.bucket_seconds == w)
    ).first()
    if listed is None:
        conn.execute(insert(aggregate_widths).values(bucket_seconds=w, built_at=utcnow()))
    return int(written or 0)


def drop_width(conn: Connection, bucket_seconds: int) -> None:
    """Stop maintaining ``bucket_seconds`` and delete its rows."""
    w = int(bucket_seconds)
    conn.execute(delete(aggregate_widths).where(aggregate_widths.c.bucket_seconds == w))
    conn.execute(delete(bucket_aggregates).where(bucket_aggregates.c.bucket_seconds == w))


def _literal_width(w: int):
    from sqlalchemy import Integer, literal_column

    # A literal, so that SQL Server's GROUP BY expression is textually the SELECT's.
    return literal_column(str(int(w)), Integer())


def compare_with_readings(conn: Connection, bucket_seconds: int) -> list[tuple]:
    """Buckets whose stored aggregate differs from a fresh grouping of readings (count, min,
    max exactly; sums to 1e-9 relative). Empty when the aggregates are exact; for tests and
    ``aggregates check``."""
    w = int(bucket_seconds)
    r = select(readings.c.ts, readings.c.device, readings.c.sensor, readings.c.value).subquery()
    fresh = {
        tuple(row[:4]): row[4:] for row in conn.execute(aggregate_select(r, _literal_width(w)))
    }
    stored = {
        tuple(row[:4]): row[4:]
        for row in conn.execute(
            select(*(bucket_aggregates.c[c] for c in COLUMNS)).where(
                and_(bucket_aggregates.c.bucket_seconds == w)
            )
        )
    }
    differences = []
    for key in sorted(set(fresh) | set(stored)):
        a, b = fresh.get(key), stored.get(key)
        if a is None or b is None or not _close(a, b):
            differences.append((key, a, b))
    return differences


def _close(a, b) -> bool:
    if a[0] != b[0] or a[2] != b[2] or a[3] != b[3]:
        return False
    return all(
        abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y)) for x, y in ((a[1], b[1]), (a[4], b[4]))
    )
