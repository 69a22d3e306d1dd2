"""Idempotent bulk insert of readings, and the bucket aggregates' upkeep.

Event Hubs delivers at least once, and CSV imports get re-run, so every insert skips keys that
already exist (:func:`shared.db.dialects.insert_if_absent`). When some rows were skipped, their
stored values are compared with the incoming ones: an identical value is a harmless redelivery;
a different one is a *conflict*, counted, logged and returned to the caller (which keeps the
value in a dead letter), never silently overwritten: the first value stored wins.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Column, Connection, DateTime, Engine, MetaData, Table, insert, select
from sqlalchemy.exc import IntegrityError

from shared import aggregates
from shared.db import pg_arrays
from shared.db.dialects import bucket_start_of
from shared.db.engine import trust_recent_connections
from shared.db.retry import call_with_sql_retry
from shared.db.schema import aggregate_widths, readings
from shared.ingestion.validation import Reading

log = logging.getLogger(__name__)

KEY = ("ts", "device", "sensor")
# Rows per executemany call: large enough to amortise round trips, small enough to bound memory
# and stay under SQL Server's parameter-array limits with fast_executemany.
INSERT_BATCH = 20_000
# Devices per IN (...) list when looking up conflicts (SQL Server allows 2,100 parameters).
LOOKUP_DEVICES = 500


@dataclass
class InsertCounts:
    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    # (index in the batch, stored value) of each reading not stored because its key holds
    # another value: the caller keeps these values where an operator can see them.
    conflicting: list[tuple[int, float]] = field(default_factory=list)

    def add(self, other: InsertCounts) -> None:
        offset = self.received
        self.received += other.received
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.conflicts += other.conflicts
        self.conflicting.extend((offset + i, v) for i, v in other.conflicting)


def _key(r: Reading) -> tuple:
    return (r.ts, r.device, r.sensor)


# A deadlock victim (two batches with overlapping keys) is retried for this long; with rows
# inserted in key order it should not happen on PostgreSQL, but SQL Server's lock escalation or
# a concurrent writer elsewhere still can.
DEADLOCK_RETRY_SECONDS = 30.0
# SQL Server: attempts when another writer inserts the same key between lookup and insert.
KEY_RACE_ATTEMPTS = 5


def insert_readings(engine: Engine, batch: Sequence[Reading]) -> InsertCounts:
    """Insert ``batch`` in one transaction; existing keys are skipped and checked for conflicts.

    The readings actually inserted are added to the bucket aggregates in the same transaction
    (``shared.aggregates``): a redelivered reading changes nothing, a late one updates its bucket.

    Rows are inserted in key order (the primary key's), so two batches with overlapping keys
    take their row locks in the same order and one waits for the other instead of deadlocking;
    a transaction that still loses a deadlock (or hits a failover) is re-run whole, which is
    safe because the insert skips existing keys.
    """
    counts = InsertCounts(received=len(batch))
    if not batch:
        return counts
    # Within one batch the same key may repeat (a sensor resending); keep the first.
    first: dict[tuple, int] = {}
    for i, r in enumerate(batch):
        key = r[:3]  # (ts, device, sensor): _key's tuple
        if key not in first:
            first[key] = i
    # Key order; a Reading sorts by its key first, and keys are unique here.
    rows = sorted(batch) if len(first) == len(batch) else sorted(batch[i] for i in first.values())

    def work() -> tuple[int, dict[tuple, float]]:
        # Retried whole on a transient error (below), so a connection used moments ago is not
        # pinged first: one round trip less per call (to Azure SQL too).
        with trust_recent_connections():
            if engine.dialect.name == "postgresql" and len(rows) <= INSERT_BATCH:
                return _insert_postgresql_autocommit(engine, rows)
            with engine.begin() as conn:
                try:
                    return _insert_rows(conn, rows)
                except BaseException:
                    # A staging table created in a transaction that rolls back is gone with it.
                    conn.connection.info.pop(_SQLITE_STAGE, None)
                    raise

    for attempt in range(1, KEY_RACE_ATTEMPTS + 1):
        try:
            inserted, existing = call_with_sql_retry(
                work, DEADLOCK_RETRY_SECONDS, "insert readings"
            )
            break
        except IntegrityError:
            # SQL Server only: another writer inserted a key between the lookup and the plain
            # INSERT; run again, and the lookup sees it (never counted twice in the aggregates).
            if attempt == KEY_RACE_ATTEMPTS:
                raise
            log.warning("a concurrent writer inserted the same readings; inserting again")
    # A value can differ from the stored one only where a key existed or repeats in the batch.
    if existing or len(first) < len(batch):
        for i, r in enumerate(batch):
            key = _key(r)
            stored = existing.get(key, batch[first[key]].value)
            if r.value != stored:
                counts.conflicting.append((i, stored))
    counts.inserted = inserted
    counts.duplicates = len(batch) - inserted
    counts.conflicts = len(counts.conflicting)
    if counts.conflicts:
        log.warning(
            "readings with a different value for an existing (device, sensor, ts) were kept "
            "as first stored; the others are dead-lettered with reason 'conflict'",
            extra={"conflicts": counts.conflicts, "received": counts.received},
        )
    return counts


def _insert_rows(conn: Connection, rows: Sequence[Reading]) -> tuple[int, dict[tuple, float]]:
    """Insert the key-ordered, key-unique ``rows`` and add exactly the inserted ones to the
    bucket aggregates (``shared.aggregates``); returns (inserted, stored values of the keys that
    were skipped or were there already, when any was)."""
    name = conn.dialect.name
    if name == "mssql":
        return _insert_mssql(conn, rows)
    inserted = 0
    existing: dict[tuple, float] = {}
    for start in range(0, len(rows), INSERT_BATCH):
        part = rows[start : start + INSERT_BATCH]
        if name == "postgresql":
            n, found = _insert_postgresql(conn, part)
            existing.update(found)
        else:
            n = _insert_sqlite(conn, part)
        inserted += n
    # Rows this batch just inserted match themselves, so only skipped keys can differ. PostgreSQL
    # returned them with the insert; a key a concurrent writer committed meanwhile is looked up.
    if inserted + len(existing) < len(rows):
        existing = _existing_values(conn, rows)
    return inserted, existing


def _insert_mssql(conn: Connection, rows: Sequence[Reading]) -> tuple[int, dict[tuple, float]]:
    """SQL Server: pyodbc's fast_executemany reports no per-row counts, so the keys are looked up
    first and the absent ones inserted with a plain INSERT: if another writer inserts one of them
    meanwhile, the INSERT fails (and the transaction is re-run) instead of skipping a row the
    aggregates would count. Aggregates are added with one MERGE per bucket."""
    existing = _existing_values(conn, rows)
    fresh = [r for r in rows if _key(r) not in existing]
    for start in range(0, len(fresh), INSERT_BATCH):
        conn.execute(insert(readings), [r._asdict() for r in fresh[start : start + INSERT_BATCH]])
    if fresh:
        aggregates.accumulate(conn, aggregates.group_rows(fresh, aggregates.widths(conn)))
    return len(fresh), existing


# SQLite: the DBAPI's executemany into a per-connection TEMP staging table, then one INSERT ...
# SELECT ... ON CONFLICT DO NOTHING RETURNING (SQLite >= 3.35): the rows it returns are exactly
# the inserted ones, grouped in Python and added to the aggregates with one executemany upsert.
# Statements are compiled once per process; the staging table is created once per connection.
_SQLITE_STAGE = "readings_stage"
_SQLITE_SQL: dict[str, str] = {}


def _sqlite_sql(conn: Connection) -> dict[str, str]:
    if not _SQLITE_SQL:
        names = [c.name for c in readings.columns]
        if names != list(Reading._fields):
            raise RuntimeError(f"unexpected readings columns {names}")
        cols = ", ".join(names)
        key = ", ".join(KEY)
        accumulate = aggregates.accumulate_statement("sqlite").compile(dialect=conn.dialect)
        order = [aggregates.COLUMNS.index(n) for n in accumulate.positiontup]
        if order != list(range(len(aggregates.COLUMNS))):
            raise RuntimeError(f"unexpected parameter order {accumulate.positiontup}")
        _SQLITE_SQL.update(
            create=f"CREATE TEMP TABLE IF NOT EXISTS {_SQLITE_STAGE} ({cols})",
            stage=f"INSERT INTO temp.{_SQLITE_STAGE} ({cols}) VALUES (?, ?, ?, ?)",
            # WHERE true: SQLite needs it to parse ON CONFLICT after INSERT ... SELECT.
            move=(
                f"INSERT INTO readings ({cols}) SELECT {cols} FROM temp.{_SQLITE_STAGE} "
                f"WHERE true ORDER BY {key} ON CONFLICT DO NOTHING RETURNING {cols}"
            ),
            clear=f"DELETE FROM temp.{_SQLITE_STAGE}",
            accumulate=str(accumulate),
        )
    return _SQLITE_SQL


def _insert_sqlite(conn: Connection, rows: Sequence[Reading]) -> int:
    """Insert ``rows`` on SQLite; returns how many were inserted (and aggregated).

    SQLite stores SQLAlchemy ``DateTime`` as ISO text with microseconds, so the timestamps are
    formatted exactly that way (and parsed back from the same map).
    """
    sql = _sqlite_sql(conn)
    info = conn.connection.info
    if not info.get(_SQLITE_STAGE):
        conn.exec_driver_sql(sql["create"])
        info[_SQLITE_STAGE] = True
    text: dict = {}  # many readings share a timestamp: format each once
    params = [
        (
            text.get(r.ts) or text.setdefault(r.ts, r.ts.isoformat(" ", "microseconds")),
            r.device,
            r.sensor,
            r.value,
        )
        for r in rows
    ]
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.executemany(sql["stage"], params)
        cursor.execute(sql["move"])
        fresh = cursor.fetchall()
        cursor.execute(sql["clear"])
        if fresh:
            stamps = {v: k for k, v in text.items()}
            widths = _widths(conn)
            grouped = aggregates.group_rows(
                ((stamps[ts], d, s, v) for ts, d, s, v in fresh), widths
            )
            cursor.executemany(
                sql["accumulate"],
                [(w, b.isoformat(" ", "microseconds"), *rest) for w, b, *rest in grouped],
            )
    finally:
        cursor.close()
    return _checked_count(len(fresh), len(rows))


def _widths(conn: Connection) -> list[int]:
    """The maintained bucket widths (SQLite and SQL Server read them per batch: a cheap lookup
    of a one-row table, and never stale after `aggregates rebuild`)."""
    return aggregates.widths(conn)


# PostgreSQL: the whole batch in ONE statement and one round trip. The readings go in as four
# arrays (unnest), the insert-if-absent RETURNs exactly the rows it inserted, and those feed the
# aggregate upsert in the same statement (a data-modifying CTE), grouped at every maintained
# width. Only when some keys were skipped does the statement also return their stored values
# (its snapshot predates its own inserts), for the conflict check: one primary-key probe per
# input row, forced by LIMIT 1 (a join the planner could turn into a scan of readings). psycopg
# prepares it server-side after a few executions on a connection; it is compiled once per
# process here.
_PG_SQL: dict[str, str] = {}
_PG_ARRAYS = "pg_arrays_registered"  # connection info key: shared.db.pg_arrays' dumpers added


def _postgresql_sql(conn: Connection) -> str:
    if not _PG_SQL:
        # Stand-ins for the CTE's names, to compile the bucket expression against them.
        fresh = Table("fresh", MetaData(), Column("ts", DateTime()))
        start = str(
            bucket_start_of(fresh.c.ts, aggregate_widths.c.bucket_seconds).compile(
                dialect=conn.dialect
            )
        )
        cols = ", ".join(Reading._fields)
        key = ", ".join(KEY)
        agg = ", ".join(aggregates.COLUMNS)
        _PG_SQL["move"] = (
            "WITH input AS ("
            # %b: binary parameters, built by shared.db.pg_arrays.
            "SELECT * FROM unnest(%b::timestamp[], %b::varchar[], %b::varchar[], %b::float8[]) "
            f"AS u({cols})), "
            f"fresh AS (INSERT INTO readings ({cols}) SELECT {cols} FROM input ORDER BY {key} "
            f"ON CONFLICT ({key}) DO NOTHING RETURNING {cols}), "
            f"agg AS (INSERT INTO bucket_aggregates ({agg}) "
            f"SELECT aggregate_widths.bucket_seconds, {start}, fresh.device, fresh.sensor, "
            "count(*), sum(fresh.value), min(fresh.value), max(fresh.value), "
            "sum(fresh.value * fresh.value) FROM fresh CROSS JOIN "
            # The widths as an array: estimated at 10 rows, where the never-analysed table is
            # estimated at 2,040, which priced a 1000-row call past jit_above_cost (40 ms of JIT
            # compilation per call).
            "unnest(ARRAY(SELECT bucket_seconds FROM aggregate_widths)) "
            "AS aggregate_widths(bucket_seconds) "
            f"GROUP BY aggregate_widths.bucket_seconds, {start}, fresh.device, fresh.sensor "
            f"ORDER BY aggregate_widths.bucket_seconds, {start}, fresh.device, fresh.sensor "
            "ON CONFLICT (bucket_seconds, bucket_start, device, sensor) DO UPDATE SET "
            "count = bucket_aggregates.count + excluded.count, "
            "sum = bucket_aggregates.sum + excluded.sum, "
            "min = least(bucket_aggregates.min, excluded.min), "
            "max = greatest(bucket_aggregates.max, excluded.max), "
            "sum_sq = bucket_aggregates.sum_sq + excluded.sum_sq), "
            "n AS (SELECT count(*) AS inserted FROM fresh) "
            "SELECT (SELECT inserted FROM n), e.ts, e.device, e.sensor, e.value "
            "FROM (SELECT 1) AS one LEFT JOIN ("
            "SELECT r.ts, r.device, r.sensor, r.value FROM input AS i CROSS JOIN LATERAL ("
            "SELECT readings.ts, readings.device, readings.sensor, readings.value "
            "FROM readings WHERE readings.ts = i.ts AND readings.device = i.device "
            "AND readings.sensor = i.sensor LIMIT 1) AS r "
            # Uncorrelated: a one-time filter, so the probes run only when keys were skipped.
            "WHERE (SELECT inserted FROM n) < (SELECT count(*) FROM input)) AS e ON true"
        )
    return _PG_SQL["move"]


def _insert_postgresql_autocommit(
    engine: Engine, rows: Sequence[Reading]
) -> tuple[int, dict[tuple, float]]:
    """One batch on PostgreSQL as a single autocommitted statement: the statement is its own
    transaction (all of it or nothing), so no BEGIN or COMMIT round trip."""
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        inserted, existing = _insert_postgresql(conn, rows)
        if inserted + len(existing) < len(rows):
            # A concurrent writer committed a key after this statement's snapshot: its value,
            # committed by now, is looked up (the rows inserted above are committed too).
            existing = _existing_values(conn, rows)
    return inserted, existing


def _insert_postgresql(conn: Connection, rows: Sequence[Reading]) -> tuple[int, dict[tuple, float]]:
    """Insert ``rows`` on PostgreSQL in one statement; returns (inserted, existing values)."""
    info = conn.connection.info
    if _PG_ARRAYS not in info:
        pg_arrays.register(conn.connection.driver_connection)
        info[_PG_ARRAYS] = True
    params = (
        pg_arrays.timestamp_array([r.ts for r in rows]),
        pg_arrays.varchar_array([r.device for r in rows]),
        pg_arrays.varchar_array([r.sensor for r in rows]),
        pg_arrays.float8_array([r.value for r in rows]),
    )
    result = conn.exec_driver_sql(_postgresql_sql(conn), params).all()
    inserted = result[0][0]
    existing = {(ts, d, s): v for _, ts, d, s, v in result if ts is not None}
    return _checked_count(inserted, len(rows)), existing


def _checked_count(rowcount: int | None, attempted: int) -> int:
    if rowcount is None or rowcount < 0:
        raise RuntimeError("the database driver did not report inserted row counts")
    return min(rowcount, attempted)


def lookup_query(lo, hi, devices: Sequence[str]):
    """Stored readings of ``devices`` with ``lo <= ts <= hi`` (the conflict and SQL Server
    existence lookup)."""
    return select(readings.c.ts, readings.c.device, readings.c.sensor, readings.c.value).where(
        readings.c.ts >= lo, readings.c.ts <= hi, readings.c.device.in_(list(devices))
    )


def _existing_values(conn: Connection, rows: Sequence[Reading]) -> dict[tuple, float]:
    """Stored values of the keys of ``rows`` that exist (one range query per device group)."""
    keys = {(r.ts, r.device, r.sensor) for r in rows}
    lo = min(r.ts for r in rows)
    hi = max(r.ts for r in rows)
    devices = sorted({r.device for r in rows})
    found: dict[tuple, float] = {}
    for start in range(0, len(devices), LOOKUP_DEVICES):
        query = lookup_query(lo, hi, devices[start : start + LOOKUP_DEVICES])
        for ts, device, sensor, value in conn.execute(query):
            if (ts, device, sensor) in keys:
                found[(ts, device, sensor)] = value
    return found
