"""Retention: old readings, bucket aggregates, predictions and anomaly events are deleted by the
timer in bounded batches (issue 12).

- Readings and their bucket aggregates older than ``READINGS_RETENTION_DAYS`` (default 30: the
  trailing training window, ``TRAIN_WINDOW_HOURS``, is 14 days, and the settings refuse a
  retention shorter than it plus a day).
- Predictions of runs whose window ended more than ``PREDICTIONS_RETENTION_DAYS`` ago (default
  90), one chunk at a time (the predictions key leads with run and chunk: each delete is a seek
  of at most one chunk's rows), then those runs' chunk and error rows; the run rows themselves
  stay (a few per hour) so the run history keeps its counts.
- Anomaly events that ended before the same cutoff, found through the index on ``start``.
- Alert notifications (the outbox) created before the same cutoff whose event is gone: an
  event's notifications stay as long as the event, so its exactly-once keys still hold for any
  re-run that could touch it, and a deleted event's announcement is not mistaken for one a re-run
  withdrew.

Each time-keyed delete takes at most ``batch_rows`` rows (the batch ends at the timestamp of the
``batch_rows``-th oldest row, found by an index seek), in its own short transaction, so no delete
holds locks or log space for long; a tick stops starting batches after ``budget_seconds``, and
what is left goes in the next tick. Deleting is idempotent: a tick cut short loses nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, delete, exists, select

from shared.db.schema import (
    aggregate_widths,
    alert_outbox,
    anomaly_events,
    bucket_aggregates,
    predictions,
    readings,
    run_chunks,
    run_errors,
    runs,
)

log = logging.getLogger(__name__)

BATCH_ROWS = 50_000
# Seconds a tick may spend starting delete batches (the timer's other work comes first).
BUDGET_SECONDS = 120.0
# Runs whose predictions are deleted per tick at most (each run: one delete per chunk).
MAX_RUNS_PER_TICK = 100


@dataclass
class Purged:
    readings: int = 0
    bucket_aggregates: int = 0
    predictions: int = 0
    runs: int = 0
    anomaly_events: int = 0
    alert_outbox: int = 0
    complete: bool = True  # False: the budget ran out, the rest goes next tick
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "readings": self.readings,
            "bucket_aggregates": self.bucket_aggregates,
            "predictions": self.predictions,
            "runs": self.runs,
            "anomaly_events": self.anomaly_events,
            "alert_outbox": self.alert_outbox,
            "complete": self.complete,
        }


def _delete_older(
    engine: Engine,
    table,
    column,
    cutoff: datetime,
    deadline: float,
    batch_rows: int,
    where=(),
) -> tuple[int, bool]:
    """Delete rows with ``column < cutoff`` (and ``where``) in batches of at most ``batch_rows``
    rows, or one timestamp's rows when more share it; returns (rows deleted, finished)."""
    deleted = 0
    while True:
        if time.monotonic() > deadline:
            return deleted, False
        with engine.begin() as conn:
            oldest = conn.execute(
                select(column).where(column < cutoff, *where).order_by(column).limit(1)
            ).scalar()
            if oldest is None:
                return deleted, True
            boundary = conn.execute(
                select(column)
                .where(column < cutoff, *where)
                .order_by(column)
                .offset(batch_rows)
                .limit(1)
            ).scalar()
            if boundary is None:
                condition = column < cutoff  # fewer than batch_rows left
            elif boundary == oldest:
                condition = column == oldest  # more than batch_rows at one instant
            else:
                condition = column < boundary
            result = conn.execute(delete(table).where(condition, *where))
            deleted += max(result.rowcount or 0, 0)
            if boundary is None:
                return deleted, True


def purge(
    engine: Engine,
    now: datetime,
    readings_days: float,
    predictions_days: float,
    batch_rows: int = BATCH_ROWS,
    budget_seconds: float = BUDGET_SECONDS,
) -> Purged:
    """Delete what the retention settings no longer keep; see the module docstring."""
    out = Purged()
    deadline = time.monotonic() + budget_seconds
    readings_cutoff = now - timedelta(days=readings_days)
    predictions_cutoff = now - timedelta(days=predictions_days)

    started = time.perf_counter()
    out.readings, done = _delete_older(
        engine, readings, readings.c.ts, readings_cutoff, deadline, batch_rows
    )
    out.complete &= done
    with engine.connect() as conn:
        widths = [w for (w,) in conn.execute(select(aggregate_widths.c.bucket_seconds))]
    for width in widths:
        n, done = _delete_older(
            engine,
            bucket_aggregates,
            bucket_aggregates.c.bucket_start,
            readings_cutoff,
            deadline,
            batch_rows,
            where=(bucket_aggregates.c.bucket_seconds == width,),
        )
        out.bucket_aggregates += n
        out.complete &= done
    out.seconds["readings"] = time.perf_counter() - started

    started = time.perf_counter()
    has_chunks = select(run_chunks.c.run_id).where(run_chunks.c.run_id == runs.c.run_id).exists()
    with engine.connect() as conn:
        old_runs = [
            run_id
            for (run_id,) in conn.execute(
                select(runs.c.run_id)
                .where(
                    runs.c.window_end < predictions_cutoff,
                    has_chunks,
                )
                .order_by(runs.c.window_end)
                .limit(MAX_RUNS_PER_TICK + 1)
            )
        ]
    if len(old_runs) > MAX_RUNS_PER_TICK:
        old_runs, out.complete = old_runs[:MAX_RUNS_PER_TICK], False
    for run_id in old_runs:
        if time.monotonic() > deadline:
            out.complete = False
            break
        with engine.connect() as conn:
            chunk_ids = [
                c
                for (c,) in conn.execute(
                    select(run_chunks.c.chunk_id).where(run_chunks.c.run_id == run_id)
                )
            ]
        for chunk_id in chunk_ids:
            with engine.begin() as conn:
                result = conn.execute(
                    delete(predictions).where(
                        and_(predictions.c.run_id == run_id, predictions.c.chunk_id == chunk_id)
                    )
                )
                out.predictions += max(result.rowcount or 0, 0)
        with engine.begin() as conn:
            # Rows recorded under a chunk id no longer listed (none normally), then the run's
            # chunk and error rows: the run row stays, with its counts, as history.
            result = conn.execute(delete(predictions).where(predictions.c.run_id == run_id))
            out.predictions += max(result.rowcount or 0, 0)
            conn.execute(delete(run_errors).where(run_errors.c.run_id == run_id))
            conn.execute(delete(run_chunks).where(run_chunks.c.run_id == run_id))
        out.runs += 1
    out.seconds["predictions"] = time.perf_counter() - started

    started = time.perf_counter()
    # An event is kept while any of it is recent: it is deleted once it ended before the cutoff
    # (start <= end, so the index on start finds every candidate).
    out.anomaly_events, done = _delete_older(
        engine,
        anomaly_events,
        anomaly_events.c.start,
        predictions_cutoff,
        deadline,
        batch_rows,
        where=(anomaly_events.c.end < predictions_cutoff,),
    )
    out.complete &= done
    out.seconds["anomaly_events"] = time.perf_counter() - started

    started = time.perf_counter()
    out.alert_outbox, done = _delete_older(
        engine,
        alert_outbox,
        alert_outbox.c.created_at,
        predictions_cutoff,
        deadline,
        batch_rows,
        where=(~exists().where(anomaly_events.c.event_id == alert_outbox.c.event_id),),
    )
    out.complete &= done
    out.seconds["alert_outbox"] = time.perf_counter() - started
    if (
        out.readings
        or out.bucket_aggregates
        or out.predictions
        or out.anomaly_events
        or out.alert_outbox
    ):
        log.info("retention purged old rows", extra=out.as_dict())
    return out
