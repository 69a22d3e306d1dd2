"""Idempotent bulk insert of readings.

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

from sqlalchemy import Column, Connection, Engine, MetaData, Table, select

from shared.db.dialects import insert_if_absent
from shared.db.retry import call_with_sql_retry
from shared.db.schema import readings
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


def insert_readings(engine: Engine, batch: Sequence[Reading]) -> InsertCounts:
    """Insert ``batch`` in one transaction; existing keys are skipped and checked for conflicts.

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
        first.setdefault(_key(r), i)
    rows = sorted((batch[i] for i in first.values()), key=_key)

    def work() -> tuple[int, dict[tuple, float]]:
        with engine.begin() as conn:
            return _insert_rows(conn, rows)

    inserted, existing = call_with_sql_retry(work, DEADLOCK_RETRY_SECONDS, "insert readings")
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
    """Insert the key-ordered, key-unique ``rows``; returns (inserted, stored values of the
    keys that were skipped or were there already, when any was)."""
    statement = insert_if_absent(readings, KEY, conn.dialect.name)
    if conn.dialect.name == "mssql":
        # pyodbc's fast_executemany reports no per-row counts: look the keys up first.
        existing = _existing_values(conn, rows)
        fresh = [r for r in rows if _key(r) not in existing]
        for start in range(0, len(fresh), INSERT_BATCH):
            conn.execute(statement, [r._asdict() for r in fresh[start : start + INSERT_BATCH]])
        return len(fresh), existing
    inserted = 0
    for start in range(0, len(rows), INSERT_BATCH):
        inserted += _insert_driver_level(conn, statement, rows[start : start + INSERT_BATCH])
    # Rows this batch just inserted match themselves, so only skipped keys can differ.
    existing = _existing_values(conn, rows) if inserted < len(rows) else {}
    return inserted, existing


def _insert_driver_level(conn: Connection, statement, rows: Sequence[Reading]) -> int:
    """Execute the insert-if-absent statement through the DBAPI's own executemany.

    The statement is the same SQLAlchemy construct, compiled once for the connection's dialect;
    only the per-row parameter processing is skipped (it cost more than the insert itself:
    ~5 us a row). SQLite stores SQLAlchemy ``DateTime`` as ISO text with microseconds, so the
    timestamps are formatted exactly that way; psycopg adapts ``datetime`` natively.
    """
    compiled = statement.compile(dialect=conn.dialect)
    if conn.dialect.name == "sqlite":
        if list(compiled.positiontup) != list(Reading._fields):
            raise RuntimeError(f"unexpected parameter order {compiled.positiontup}")
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
    elif conn.dialect.name == "postgresql":
        return _insert_postgresql_copy(conn, rows)
    else:
        params = [r._asdict() for r in rows]
    cursor = conn.exec_driver_sql(str(compiled), params)
    return _checked_count(cursor.rowcount, len(rows))


# PostgreSQL's fastest bulk path: COPY into a session-local staging table, then one
# INSERT ... SELECT ... ON CONFLICT DO NOTHING (the same insert-if-absent, set-based).
_PG_STAGE = Table(
    "readings_stage",
    MetaData(),
    *(Column(c.name, c.type) for c in readings.columns),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DELETE ROWS",
)


def _insert_postgresql_copy(conn: Connection, rows: Sequence[Reading]) -> int:
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateTable

    dialect = conn.dialect
    create = str(CreateTable(_PG_STAGE, if_not_exists=True).compile(dialect=dialect))
    names = [c.name for c in _PG_STAGE.columns]
    move = (
        postgresql.insert(readings)
        # In key order: concurrent batches then lock overlapping keys in the same order.
        .from_select(
            names,
            select(*_PG_STAGE.columns).order_by(*(_PG_STAGE.c[k] for k in KEY)),
        )
        .on_conflict_do_nothing(index_elements=list(KEY))
    )
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute(create)
        with cursor.copy(f"COPY {_PG_STAGE.name} ({', '.join(names)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        cursor.execute(str(move.compile(dialect=dialect)))
        inserted = cursor.rowcount
        cursor.execute(f"TRUNCATE {_PG_STAGE.name}")
    finally:
        cursor.close()
    return _checked_count(inserted, len(rows))


def _checked_count(rowcount: int | None, attempted: int) -> int:
    if rowcount is None or rowcount < 0:
        raise RuntimeError("the database driver did not report inserted row counts")
    return min(rowcount, attempted)


def _existing_values(conn: Connection, rows: Sequence[Reading]) -> dict[tuple, float]:
    """Stored values of the keys of ``rows`` that exist (one range query per device group)."""
    keys = {(r.ts, r.device, r.sensor) for r in rows}
    lo = min(r.ts for r in rows)
    hi = max(r.ts for r in rows)
    devices = sorted({r.device for r in rows})
    found: dict[tuple, float] = {}
    for start in range(0, len(devices), LOOKUP_DEVICES):
        query = select(readings.c.ts, readings.c.device, readings.c.sensor, readings.c.value).where(
            readings.c.ts >= lo,
            readings.c.ts <= hi,
            readings.c.device.in_(devices[start : start + LOOKUP_DEVICES]),
        )
        for ts, device, sensor, value in conn.execute(query):
            if (ts, device, sensor) in keys:
                found[(ts, device, sensor)] = value
    return found
