"""Run records in SQL: creating a run once per run key, reading and updating it.

Status lifecycle::

    pending -> submitted -> scoring -> completed | partial | failed
         \\-> failed (preparation failed, nothing to score)

``pending``: recorded, not yet submitted; an on-demand run waits in the run-request queue in this
state (while the queue retries a failed preparation, ``error`` holds the last attempt's reason).

``completed``: every chunk recorded, no sensor failed. ``partial``: every chunk is in but some
sensors or chunks failed (the reasons are in ``run_errors``). ``failed``: the run produced no
usable predictions (nothing to score, the executor job failed, or it stalled past the timeout).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, case, func, select, update

from shared.clock import utcnow
from shared.db.dialects import insert_if_absent
from shared.db.schema import run_chunks, run_errors, runs
from shared.runs.windows import Window

PENDING, SUBMITTED, SCORING = "pending", "submitted", "scoring"
COMPLETED, PARTIAL, FAILED = "completed", "partial", "failed"
STATUSES = (PENDING, SUBMITTED, SCORING, COMPLETED, PARTIAL, FAILED)
TERMINAL = (COMPLETED, PARTIAL, FAILED)
TRIGGERS = ("timer", "http", "cli")

CHUNK_WRITTEN, CHUNK_RECORDED, CHUNK_FAILED = "written", "recorded", "failed"


@dataclass(frozen=True)
class RunFilters:
    """Which sensors an on-demand run covers (empty: all with an active model)."""

    devices: tuple[str, ...] = ()
    sensors: tuple[tuple[str, str], ...] = ()

    def as_json(self) -> str | None:
        if not self.devices and not self.sensors:
            return None
        return json.dumps(
            {"devices": list(self.devices), "sensors": [list(s) for s in self.sensors]},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | None) -> RunFilters:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(tuple(data.get("devices", ())), tuple(tuple(s) for s in data.get("sensors", ())))


def run_key(window: Window, trigger: str, filters: RunFilters, attempt: int = 1) -> str:
    """The unique key of a run. Scheduled runs are keyed by window alone, so a double fire (or
    two instances) makes one run; on-demand runs also by their filters and attempt."""
    key = f"{window.start.isoformat()}/{window.end.isoformat()}"
    if trigger == "timer":
        return f"scheduled:{key}"
    digest = hashlib.sha256((filters.as_json() or "").encode()).hexdigest()[:12]
    return f"ondemand:{key}:{digest}:{attempt}"


def run_id_for(key: str, window: Window) -> str:
    """A readable, deterministic run id: the window end plus a hash of the run key."""
    return f"run-{window.end:%Y%m%dT%H%M%S}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


@dataclass
class Run:
    run_id: str
    run_key: str
    window: Window
    trigger: str
    executor: str
    status: str
    filters: RunFilters = field(default_factory=RunFilters)
    job_id: str | None = None
    job_url: str | None = None
    n_sensors: int = 0
    n_sensors_without_model: int = 0
    n_chunks: int = 0
    n_chunks_recorded: int = 0
    n_chunks_failed: int = 0
    n_predictions: int = 0
    n_anomalies: int = 0
    n_sensor_errors: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    created_at: datetime | None = None
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def as_dict(self) -> dict[str, Any]:
        def iso(ts):
            return ts.isoformat() + "Z" if ts else None

        return {
            "run_id": self.run_id,
            "status": self.status,
            "window": {"start": iso(self.window.start), "end": iso(self.window.end)},
            "trigger": self.trigger,
            "executor": self.executor,
            "job_id": self.job_id,
            "job_url": self.job_url,
            "filters": json.loads(self.filters.as_json() or "{}"),
            "counts": {
                "sensors": self.n_sensors,
                "sensors_without_model": self.n_sensors_without_model,
                "chunks": self.n_chunks,
                "chunks_recorded": self.n_chunks_recorded,
                "chunks_failed": self.n_chunks_failed,
                "predictions": self.n_predictions,
                "anomalies": self.n_anomalies,
                "sensor_errors": self.n_sensor_errors,
            },
            "timings": self.timings,
            "error": self.error,
            "created_at": iso(self.created_at),
            "submitted_at": iso(self.submitted_at),
            "finished_at": iso(self.finished_at),
            "updated_at": iso(self.updated_at),
        }


def _from_row(row) -> Run:
    return Run(
        run_id=row.run_id,
        run_key=row.run_key,
        window=Window(row.window_start, row.window_end),
        trigger=row.trigger,
        executor=row.executor,
        status=row.status,
        filters=RunFilters.from_json(row.filters),
        job_id=row.job_id,
        job_url=row.job_url,
        n_sensors=row.n_sensors,
        n_sensors_without_model=row.n_sensors_without_model,
        n_chunks=row.n_chunks,
        n_chunks_recorded=row.n_chunks_recorded,
        n_chunks_failed=row.n_chunks_failed,
        n_predictions=row.n_predictions,
        n_anomalies=row.n_anomalies,
        n_sensor_errors=row.n_sensor_errors,
        timings=json.loads(row.timings) if row.timings else {},
        error=row.error,
        created_at=row.created_at,
        submitted_at=row.submitted_at,
        finished_at=row.finished_at,
        updated_at=row.updated_at,
    )


def create_run(
    engine: Engine,
    window: Window,
    trigger: str,
    executor: str,
    filters: RunFilters,
    attempt: int = 1,
) -> tuple[Run, bool]:
    """Insert the run for this key unless it exists; returns (run, created_by_this_call)."""
    key = run_key(window, trigger, filters, attempt)
    now = utcnow()
    row = {
        "run_id": run_id_for(key, window),
        "run_key": key,
        "window_start": window.start,
        "window_end": window.end,
        "trigger": trigger,
        "executor": executor,
        "job_id": None,
        "job_url": None,
        "status": PENDING,
        "filters": filters.as_json(),
        "n_sensors": 0,
        "n_sensors_without_model": 0,
        "n_chunks": 0,
        "n_chunks_recorded": 0,
        "n_chunks_failed": 0,
        "n_predictions": 0,
        "n_anomalies": 0,
        "n_sensor_errors": 0,
        "timings": None,
        "error": None,
        "created_at": now,
        "submitted_at": None,
        "finished_at": None,
        "updated_at": now,
    }
    with engine.begin() as conn:
        result = conn.execute(
            insert_if_absent(runs, ["run_key"], conn.dialect.name),
            [row],
            execution_options={"preserve_rowcount": True},
        )
        created = result.rowcount == 1
        existing = conn.execute(select(runs).where(runs.c.run_key == key)).one()
    return _from_row(existing), created


def get_run(conn: Connection | Engine, run_id: str) -> Run | None:
    if isinstance(conn, Engine):
        with conn.connect() as c:
            return get_run(c, run_id)
    row = conn.execute(select(runs).where(runs.c.run_id == run_id)).one_or_none()
    return _from_row(row) if row else None


def list_runs(
    engine: Engine, status: str | None = None, limit: int = 20, trigger: str | None = None
) -> list[Run]:
    query = select(runs).order_by(runs.c.created_at.desc(), runs.c.run_id).limit(limit)
    if status:
        query = query.where(runs.c.status == status)
    if trigger:
        query = query.where(runs.c.trigger == trigger)
    with engine.connect() as conn:
        return [_from_row(r) for r in conn.execute(query)]


def last_scheduled_end(engine: Engine) -> datetime | None:
    with engine.connect() as conn:
        return conn.execute(
            select(func.max(runs.c.window_end)).where(runs.c.trigger == "timer")
        ).scalar_one_or_none()


def update_run(
    conn: Connection, run_id: str, *, only_if_active: bool = False, **values: Any
) -> None:
    """Set columns of a run; with ``only_if_active`` a run already finished is left alone (the
    blob trigger may finish a run while the code that submitted it is still returning)."""
    if "timings" in values and isinstance(values["timings"], dict):
        values["timings"] = json.dumps(values["timings"])
    values["updated_at"] = utcnow()
    statement = update(runs).where(runs.c.run_id == run_id)
    if only_if_active:
        statement = statement.where(runs.c.status.notin_(TERMINAL))
    conn.execute(statement.values(**values))


def set_timing(engine: Engine, run_id: str, stage: str, seconds: float) -> None:
    """Record how long a stage took (merged into the run's timings; a repeated stage, such as
    a second delivery of the predictions, replaces its figure rather than adding to it)."""
    with engine.begin() as conn:
        current = conn.execute(select(runs.c.timings).where(runs.c.run_id == run_id)).scalar_one()
        timings = json.loads(current) if current else {}
        timings[stage] = round(seconds, 4)
        update_run(conn, run_id, timings=timings)


def fail_run(engine: Engine, run_id: str, reason: str) -> None:
    """Mark a non-terminal run failed with ``reason`` (a terminal run is left as it is)."""
    with engine.begin() as conn:
        conn.execute(
            update(runs)
            .where(runs.c.run_id == run_id, runs.c.status.notin_(TERMINAL))
            .values(status=FAILED, error=reason[:4000], finished_at=utcnow(), updated_at=utcnow())
        )


def run_errors_of(engine: Engine, run_id: str, limit: int = 200) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                run_errors.c.chunk_id,
                run_errors.c.device,
                run_errors.c.sensor,
                run_errors.c.kind,
                run_errors.c.reason,
            )
            .where(run_errors.c.run_id == run_id)
            .order_by(run_errors.c.kind, run_errors.c.device, run_errors.c.sensor)
            .limit(limit)
        ).all()
    return [dict(r._mapping) for r in rows]


def refresh_counts(conn: Connection, run_id: str) -> Run:
    """Recompute a run's counts from its chunks (idempotent: safe under duplicate deliveries)
    and finish it when every chunk is in.

    The run's row is locked first, so concurrent recordings of a run's chunks (the host runs
    several blob-trigger calls at once) count one after another, each after the previous one
    committed: counted before the lock, the last two could each miss the other's chunk and
    leave a run with every chunk recorded stuck in ``scoring``. (FOR UPDATE; UPDLOCK on SQL
    Server; SQLite takes one writer at a time and ignores it.)"""
    conn.execute(
        select(runs.c.run_id)
        .where(runs.c.run_id == run_id)
        .with_for_update()
        .with_hint(runs, "WITH (UPDLOCK, ROWLOCK)", dialect_name="mssql")
    )
    totals = conn.execute(
        select(
            func.count().label("chunks"),
            func.sum(case((run_chunks.c.status == CHUNK_RECORDED, 1), else_=0)).label("recorded"),
            func.sum(case((run_chunks.c.status == CHUNK_FAILED, 1), else_=0)).label("failed"),
            func.coalesce(func.sum(run_chunks.c.n_predictions), 0).label("predictions"),
            func.coalesce(func.sum(run_chunks.c.n_anomalies), 0).label("anomalies"),
            func.coalesce(func.sum(run_chunks.c.n_errors), 0).label("errors"),
        ).where(run_chunks.c.run_id == run_id)
    ).one()
    run = get_run(conn, run_id)
    values: dict[str, Any] = {
        "n_chunks_recorded": int(totals.recorded or 0),
        "n_chunks_failed": int(totals.failed or 0),
        "n_predictions": int(totals.predictions),
        "n_anomalies": int(totals.anomalies),
        "n_sensor_errors": int(totals.errors),
    }
    done = int(totals.recorded or 0) + int(totals.failed or 0)
    # A run already ended by chunk outcomes (every chunk failed, or some) is re-judged when a
    # chunk's outcome changes afterwards: a chunk failed when its job failed or stalled may
    # still be recorded when its file arrives late, and a run with predictions is not failed.
    rejudge = (
        run is not None
        and run.terminal
        and run.n_chunks
        and done >= run.n_chunks
        and (
            values["n_chunks_recorded"] != run.n_chunks_recorded
            or values["n_chunks_failed"] != run.n_chunks_failed
        )
    )
    if run is not None and (not run.terminal or rejudge) and run.n_chunks and done >= run.n_chunks:
        if values["n_chunks_failed"] == run.n_chunks:
            reasons = sorted(
                {
                    e
                    for (e,) in conn.execute(
                        select(run_chunks.c.error).where(
                            run_chunks.c.run_id == run_id, run_chunks.c.status == CHUNK_FAILED
                        )
                    )
                    if e
                }
            )
            values["status"] = FAILED
            values["error"] = (
                reasons[0]
                if len(reasons) == 1
                else f"every chunk failed ({len(reasons)} reasons; see the run's "
                f"errors): {reasons[0] if reasons else 'unknown'}"
            )
        elif values["n_chunks_failed"] or values["n_sensor_errors"]:
            values["status"] = PARTIAL
            values["error"] = (
                f"{values['n_chunks_failed']} chunk(s) and {values['n_sensor_errors']} "
                "sensor(s) failed; see the run's errors"
            )
        else:
            values["status"] = COMPLETED
            values["error"] = None
        if not run.terminal:
            values["finished_at"] = utcnow()
    update_run(conn, run_id, **values)
    return get_run(conn, run_id)
