"""Keeping ``anomaly_events`` in step with ``predictions`` as chunks are recorded.

Called by recording (``shared.runs.recording``) in the transaction that writes a chunk's
predictions. A chunk holds complete sensors, so the events of those sensors are recomputed from
their predictions, not patched: what the table holds afterwards is a function of the stored
predictions alone, whatever order chunks arrive in and however often one is delivered.

For the chunk's sensors, with ``G`` = ``EVENT_GAP_BUCKETS`` buckets and ``ws`` the chunk's first
bucket, ``lo = ws - G``:

1. The sensor's events that a flag at or after ``ws`` could touch are those whose last flag is
   at or after ``lo`` (the *affected* events). Any other event ended more than ``G`` buckets
   before anything this chunk changed, so it cannot merge with it.
2. Their flags are re-read from ``lo`` (or from the earliest affected event's onset, when an
   open event began before ``lo``) to the sensor's latest prediction, then grouped again
   (:func:`shared.events.model.segment`). An event still open at the end of one run's window is
   thereby extended by the next run's flags, keeping its id.
3. New events are inserted, changed ones updated (``created_at`` kept), vanished ones deleted;
   an event whose onset moved gets a new id (the id is a hash of the onset). Stale ``open``
   events of these sensors are closed.

Which prediction counts when several runs scored the same bucket (a ``rerun``, an on-demand run
over a scheduled window): the one of the newest run (``runs.created_at``, then ``run_id``), so
the result does not depend on delivery order and a re-run with a new model can clear a flag.

Everything is set-based per chunk: a handful of statements, each joining the chunk's sensors to
an index, and only flagged buckets cross to Python, read a slice of whole sensors at a time
(``_flag_slices``), whatever the chunk's size. Concurrent
recordings of chunks that share sensors (catch-up windows recorded in parallel) are serialised
on the events step by a transaction-scoped lock (PostgreSQL advisory lock, SQL Server
``sp_getapplock``; SQLite already serialises writers), so the last one to take the lock reads
every committed prediction and the table converges.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy import (
    BigInteger,
    Connection,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    update,
)

from shared.clock import utcnow
from shared.db.schema import anomaly_events, predictions, runs
from shared.events.model import OPEN, AnomalyEvent, is_open, segment

# SQL Server takes at most 2100 parameters per statement.
IN_BATCH = 1000
# Flags segmented at a time (~1 KB each with its explanation): memory bounded by a slice.
FLAG_SLICE_ROWS = 5_000
LOCK_NAME = "anomaly_events"
# A fixed 63-bit key for PostgreSQL's advisory lock, derived from the name.
LOCK_KEY = int.from_bytes(hashlib.sha256(LOCK_NAME.encode()).digest()[:8], "big") >> 1
MSSQL_LOCK = text(
    "SET NOCOUNT ON; DECLARE @rc INT; "
    "EXEC @rc = sp_getapplock @Resource = N'anomaly_events', @LockMode = N'Exclusive', "
    "@LockOwner = N'Transaction', @LockTimeout = 120000; "
    "IF @rc < 0 THROW 51000, N'timed out waiting for the anomaly events lock', 1;"
)

EVENT_FIELDS = (
    "device",
    "sensor",
    "start",
    "end",
    "last_bucket_start",
    "n_buckets",
    "onset_score",
    "peak_score",
    "peak_bucket",
    "status",
    "first_run_id",
    "last_run_id",
    "explanation",  # JSON text: the peak bucket's (scoring.explain)
)


@dataclass
class EventChanges:
    """What one chunk's recording did to the events table."""

    sensors: int = 0
    opened: int = 0  # inserted
    updated: int = 0  # extended, re-scored or closed
    deleted: int = 0  # no longer supported by the predictions (an onset moved, flags cleared)

    @property
    def changed(self) -> int:
        return self.opened + self.updated + self.deleted


def newest_prediction(q) -> object:
    """A predicate on a ``predictions`` alias ``q``: no newer run scored the same bucket.

    "Newer" orders runs by ``created_at`` and then ``run_id``, so exactly one row per device,
    sensor and bucket passes.
    """
    mine, other_run = runs.alias("mine"), runs.alias("other_run")
    other = predictions.alias("other")
    newer = (
        exists()
        .where(
            other.c.device == q.c.device,
            other.c.sensor == q.c.sensor,
            other.c.bucket_start == q.c.bucket_start,
            other.c.run_id != q.c.run_id,
            other_run.c.run_id == other.c.run_id,
            mine.c.run_id == q.c.run_id,
            or_(
                other_run.c.created_at > mine.c.created_at,
                and_(
                    other_run.c.created_at == mine.c.created_at,
                    other_run.c.run_id > mine.c.run_id,
                ),
            ),
        )
        .correlate(q)
    )
    return ~newer


def lock_events(conn: Connection) -> None:
    """Serialise event updates until this transaction ends (see the module docstring)."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(literal(LOCK_KEY, BigInteger()))))
    elif dialect == "mssql":
        conn.execute(MSSQL_LOCK)


def update_events_for_chunk(
    conn: Connection,
    run_id: str,
    chunk_id: str,
    gap_buckets: int,
    bucket_seconds: int,
    now: datetime | None = None,
    rest_buckets: int | None = None,
    slice_rows: int = FLAG_SLICE_ROWS,
) -> EventChanges:
    """Recompute the events of the sensors in ``run_id``/``chunk_id`` from their predictions.

    Run it in the transaction that wrote the chunk's predictions (it reads them). Idempotent:
    a second call with nothing new changes no row, not even ``updated_at``.
    """
    now = now or utcnow()
    lock_events(conn)
    chunk = (
        select(
            predictions.c.device,
            predictions.c.sensor,
            func.min(predictions.c.bucket_start).label("first_bucket"),
        )
        .where(predictions.c.run_id == run_id, predictions.c.chunk_id == chunk_id)
        .group_by(predictions.c.device, predictions.c.sensor)
        .subquery("chunk_sensors")
    )
    # The latest scored bucket of each of the chunk's sensors (this chunk or a later run's).
    q = predictions.alias("q")
    latest = {
        (d, s): (first, last)
        for d, s, first, last in conn.execute(
            select(chunk.c.device, chunk.c.sensor, chunk.c.first_bucket, func.max(q.c.bucket_start))
            .join(
                q,
                and_(
                    q.c.device == chunk.c.device,
                    q.c.sensor == chunk.c.sensor,
                    q.c.bucket_start >= chunk.c.first_bucket,
                ),
            )
            .group_by(chunk.c.device, chunk.c.sensor, chunk.c.first_bucket)
        )
    }
    changes = EventChanges(sensors=len(latest))
    if not latest:
        return changes
    gap = timedelta(seconds=int(bucket_seconds) * int(gap_buckets))
    lo = min(first for first, _ in latest.values()) - gap

    existing = [
        _event(row)
        for row in conn.execute(
            select(anomaly_events)
            .join(
                chunk,
                and_(
                    anomaly_events.c.device == chunk.c.device,
                    anomaly_events.c.sensor == chunk.c.sensor,
                ),
            )
            .where(or_(anomaly_events.c.last_bucket_start >= lo, anomaly_events.c.status == OPEN))
        )
    ]
    affected = {e.event_id: e for e in existing if e.last_bucket_start >= lo}
    stale_open = [e for e in existing if e.last_bucket_start < lo]

    early = [e.event_id for e in affected.values() if e.start < lo]
    # Read before the flags' cursor opens: SQL Server (no MARS) runs one statement at a time.
    early_flags = _flags_of_events_before(conn, early, lo) if early else None
    latest_scored = {key: last for key, (_, last) in latest.items()}
    computed = {
        e.event_id: e
        # Sensors are segmented independently, so a slice of whole sensors at a time gives the
        # events the whole chunk's flags would, holding one slice of flags (issue 12).
        for flags in _flag_slices(conn, chunk, lo, early_flags, slice_rows)
        for e in segment(flags, gap_buckets, bucket_seconds, latest_scored, rest_buckets)
        # A sensor of this chunk only: flags come from its sensors, this is a guard.
        if (e.device, e.sensor) in latest
    }

    gone = [i for i in affected if i not in computed]
    new = [e for i, e in computed.items() if i not in affected]
    changed = [
        e for i, e in computed.items() if i in affected and _fields(e) != _fields(affected[i])
    ]
    rest = timedelta(seconds=int(bucket_seconds) * int(rest_buckets)) if rest_buckets else None
    bucket = timedelta(seconds=int(bucket_seconds))
    closing = [
        (e.event_id, "closed")
        for e in stale_open
        # Its last flag is more than G buckets (or its onset R buckets) before the sensor's
        # latest scored bucket.
        if not is_open(
            e.start,
            e.last_bucket_start,
            latest_scored.get((e.device, e.sensor), e.last_bucket_start),
            gap,
            rest,
            bucket,
        )
    ]
    for batch in _batches(gone):
        conn.execute(delete(anomaly_events).where(anomaly_events.c.event_id.in_(batch)))
    if changed:
        conn.execute(
            update(anomaly_events)
            .where(anomaly_events.c.event_id == bindparam("b_event_id"))
            .values({name: bindparam(f"b_{name}") for name in (*EVENT_FIELDS, "updated_at")}),
            [
                {
                    "b_event_id": e.event_id,
                    **{f"b_{name}": value for name, value in _fields(e).items()},
                    "b_updated_at": now,
                }
                for e in changed
            ],
        )
    if closing:
        conn.execute(
            update(anomaly_events)
            .where(anomaly_events.c.event_id == bindparam("b_event_id"))
            .values(status=bindparam("b_status"), updated_at=now),
            [{"b_event_id": i, "b_status": status} for i, status in closing],
        )
    if new:
        conn.execute(
            insert(anomaly_events),
            [
                {"event_id": e.event_id, **_fields(e), "created_at": now, "updated_at": now}
                for e in new
            ],
        )
    changes.opened, changes.updated, changes.deleted = (
        len(new),
        len(changed) + len(closing),
        len(gone),
    )
    return changes


def _flag_slices(
    conn: Connection,
    chunk,
    lo: datetime,
    early: pd.DataFrame | None = None,
    slice_rows: int = FLAG_SLICE_ROWS,
) -> Iterator[pd.DataFrame]:
    """Flagged buckets (newest run's prediction) of the chunk's sensors from ``lo`` on, in
    frames of about ``slice_rows`` flags holding whole sensors, each with its sensors' rows of
    ``early`` (flags before ``lo``); the sensors of ``early`` with no flag from ``lo`` come last.

    Read from a cursor ordered by sensor (server-side on PostgreSQL, stepped lazily by SQLite
    and pyodbc): Python holds one slice and the sensor that straddles two, not the chunk's flags.
    """
    before = {}
    if early is not None and not early.empty:
        before = {key: part for key, part in early.groupby(["device", "sensor"], sort=False)}
    q = predictions.alias("q")
    result = conn.execute(
        select(q.c.device, q.c.sensor, q.c.bucket_start, q.c.score, q.c.run_id, q.c.explanation)
        .join(chunk, and_(q.c.device == chunk.c.device, q.c.sensor == chunk.c.sensor))
        .where(q.c.bucket_start >= lo, q.c.is_anomaly == true(), newest_prediction(q))
        .order_by(q.c.device, q.c.sensor),
        execution_options={"stream_results": True, "yield_per": slice_rows},
    )
    pending: list = []
    for partition in result.partitions():
        rows = pending + list(partition)
        last = (rows[-1][0], rows[-1][1])
        cut = len(rows)
        while cut and (rows[cut - 1][0], rows[cut - 1][1]) == last:
            cut -= 1  # the last sensor may go on in the next partition
        pending = rows[cut:]
        if cut:
            yield _with_early(_frame(rows[:cut]), before)
    if pending:
        yield _with_early(_frame(pending), before)
    if before:
        yield pd.concat(before.values(), ignore_index=True)


def _with_early(flags: pd.DataFrame, before: dict) -> pd.DataFrame:
    """``flags`` with the early flags of its sensors (taken out of ``before``)."""
    if not before:
        return flags
    keys = set(zip(flags["device"], flags["sensor"], strict=True))
    extra = [before.pop(key) for key in keys if key in before]
    return pd.concat([flags, *extra], ignore_index=True) if extra else flags


def _flags_of_events_before(conn: Connection, event_ids: Sequence[str], lo: datetime):
    """Flagged buckets before ``lo`` of events that began before it and reach past it."""
    q = predictions.alias("q")
    frames = []
    for batch in _batches(event_ids):
        rows = conn.execute(
            select(q.c.device, q.c.sensor, q.c.bucket_start, q.c.score, q.c.run_id, q.c.explanation)
            .join(
                anomaly_events,
                and_(
                    q.c.device == anomaly_events.c.device,
                    q.c.sensor == anomaly_events.c.sensor,
                    q.c.bucket_start >= anomaly_events.c.start,
                ),
            )
            .where(
                anomaly_events.c.event_id.in_(batch),
                q.c.bucket_start < lo,
                q.c.is_anomaly == true(),
                newest_prediction(q),
            )
        ).all()
        frames.append(_frame(rows))
    return pd.concat(frames, ignore_index=True)


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame(
        [tuple(r) for r in rows],
        columns=["device", "sensor", "bucket_start", "score", "run_id", "explanation"],
    )


def _event(row) -> AnomalyEvent:
    return AnomalyEvent(**{k: row._mapping[k] for k in AnomalyEvent.__dataclass_fields__})


def _fields(event: AnomalyEvent) -> dict:
    """The stored columns of an event (the explanation as canonical JSON text)."""
    out = {name: getattr(event, name) for name in EVENT_FIELDS}
    out["explanation"] = event.explanation_text()
    return out


def _batches(items: Sequence, size: int = IN_BATCH) -> Iterable[list]:
    items = list(items)
    for i in range(0, len(items), size):
        yield items[i : i + size]
