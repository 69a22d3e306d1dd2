"""Training job records: ``training_jobs`` and ``training_chunks``.

A job is created once per training key and attempt (the unique pair: two timers that race for
the same key create one job), gets its chunks as they are written, is submitted to an executor,
and ends when every chunk is ``registered`` or ``failed``: ``completed`` (every chunk
registered), ``partial`` (some chunks failed) or ``failed`` (none registered, or nothing could
be submitted). Counts are recomputed from the chunks, so a repeated registration cannot
inflate them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, case, func, select, update

from shared.clock import utcnow
from shared.db.dialects import insert_if_absent
from shared.db.schema import training_chunks, training_jobs
from shared.runs.windows import Window

PREPARING, SUBMITTED, TRAINING = "preparing", "submitted", "training"
COMPLETED, PARTIAL, FAILED = "completed", "partial", "failed"
TERMINAL = (COMPLETED, PARTIAL, FAILED)
CHUNK_WRITTEN, CHUNK_REGISTERED, CHUNK_FAILED = "written", "registered", "failed"
MAX_REASON = 4000


@dataclass(frozen=True)
class Job:
    job_id: str
    training_key: str
    attempt: int
    window: Window
    estimator: str
    executor: str
    backend_job_id: str | None
    job_url: str | None
    status: str
    n_sensors: int
    n_chunks: int
    n_chunks_done: int
    n_chunks_failed: int
    n_activated: int
    n_kept: int
    error: str | None
    created_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "window"}
        out["window"] = [self.window.start.isoformat(), self.window.end.isoformat()]
        for k in ("created_at", "submitted_at", "finished_at", "updated_at"):
            out[k] = out[k].isoformat() if out[k] else None
        return out


def _job(row) -> Job:
    m = row._mapping
    return Job(
        job_id=m["job_id"],
        training_key=m["training_key"],
        attempt=int(m["attempt"]),
        window=Window(m["window_start"], m["window_end"]),
        estimator=m["estimator"],
        executor=m["executor"],
        backend_job_id=m["backend_job_id"],
        job_url=m["job_url"],
        status=m["status"],
        n_sensors=int(m["n_sensors"]),
        n_chunks=int(m["n_chunks"]),
        n_chunks_done=int(m["n_chunks_done"]),
        n_chunks_failed=int(m["n_chunks_failed"]),
        n_activated=int(m["n_activated"]),
        n_kept=int(m["n_kept"]),
        error=m["error"],
        created_at=m["created_at"],
        submitted_at=m["submitted_at"],
        finished_at=m["finished_at"],
        updated_at=m["updated_at"],
    )


def job_id_for(training_key: str, window: Window, attempt: int) -> str:
    """``train-<window end>-<key prefix>-<attempt>``: readable, unique per key and attempt."""
    return f"train-{window.end:%Y%m%dT%H%M%S}-{training_key[:12]}-{attempt}"


def create_job(
    engine: Engine, training_key: str, window: Window, estimator: str, executor: str
) -> Job | None:
    """A new attempt for ``training_key`` (the previous attempts are finished), or None when
    another caller created it first (it trains these sensors; this caller leaves them)."""
    with engine.connect() as conn:
        last = conn.execute(
            select(func.max(training_jobs.c.attempt)).where(
                training_jobs.c.training_key == training_key
            )
        ).scalar_one_or_none()
    attempt = int(last or 0) + 1
    now = utcnow()
    row = {
        "job_id": job_id_for(training_key, window, attempt),
        "training_key": training_key,
        "attempt": attempt,
        "window_start": window.start,
        "window_end": window.end,
        "estimator": estimator,
        "executor": executor,
        "backend_job_id": None,
        "job_url": None,
        "status": PREPARING,
        "n_sensors": 0,
        "n_chunks": 0,
        "n_chunks_done": 0,
        "n_chunks_failed": 0,
        "n_activated": 0,
        "n_kept": 0,
        "error": None,
        "created_at": now,
        "submitted_at": None,
        "finished_at": None,
        "updated_at": now,
    }
    with engine.begin() as conn:
        result = conn.execute(
            insert_if_absent(training_jobs, ["training_key", "attempt"], conn.dialect.name),
            [row],
            execution_options={"preserve_rowcount": True},
        )
        if result.rowcount != 1:
            return None
        return get_job(conn, row["job_id"])


def get_job(conn: Connection | Engine, job_id: str) -> Job | None:
    if isinstance(conn, Engine):
        with conn.connect() as c:
            return get_job(c, job_id)
    row = conn.execute(select(training_jobs).where(training_jobs.c.job_id == job_id)).one_or_none()
    return _job(row) if row else None


def open_jobs(engine: Engine) -> list[Job]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(training_jobs)
            .where(training_jobs.c.status.notin_(TERMINAL))
            .order_by(training_jobs.c.created_at)
        ).all()
    return [_job(r) for r in rows]


def list_jobs(engine: Engine, limit: int = 20) -> list[Job]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(training_jobs)
            .order_by(training_jobs.c.created_at.desc(), training_jobs.c.job_id)
            .limit(limit)
        ).all()
    return [_job(r) for r in rows]


def update_job(conn: Connection, job_id: str, *, only_if_open: bool = True, **values: Any) -> None:
    values["updated_at"] = utcnow()
    statement = update(training_jobs).where(training_jobs.c.job_id == job_id)
    if only_if_open:
        statement = statement.where(training_jobs.c.status.notin_(TERMINAL))
    conn.execute(statement.values(**values))


def chunk_rows(conn: Connection | Engine, job_id: str, status: str | None = None) -> list:
    if isinstance(conn, Engine):
        with conn.connect() as c:
            return chunk_rows(c, job_id, status)
    query = select(training_chunks).where(training_chunks.c.job_id == job_id)
    if status:
        query = query.where(training_chunks.c.status == status)
    return conn.execute(query.order_by(training_chunks.c.chunk_id)).all()


def refresh_job(conn: Connection, job_id: str) -> Job:
    """Recount a job from its chunks and finish it when every chunk is in."""
    totals = conn.execute(
        select(
            func.sum(case((training_chunks.c.status == CHUNK_REGISTERED, 1), else_=0)).label(
                "registered"
            ),
            func.sum(case((training_chunks.c.status == CHUNK_FAILED, 1), else_=0)).label("failed"),
        ).where(training_chunks.c.job_id == job_id)
    ).one()
    registered, failed = int(totals.registered or 0), int(totals.failed or 0)
    activated = kept = 0
    for (result,) in conn.execute(
        select(training_chunks.c.result).where(
            training_chunks.c.job_id == job_id, training_chunks.c.result.is_not(None)
        )
    ):
        counts = json.loads(result)
        activated += int(counts.get("n_activated", 0))
        kept += int(counts.get("n_kept", 0))
    job = get_job(conn, job_id)
    values: dict[str, Any] = {
        "n_chunks_done": registered + failed,
        "n_chunks_failed": failed,
        "n_activated": activated,
        "n_kept": kept,
    }
    if job is not None and job.n_chunks and registered + failed >= job.n_chunks:
        # Judged again when a chunk's outcome changes after the job ended (a late summary).
        values["status"] = COMPLETED if not failed else (PARTIAL if registered else FAILED)
        values["finished_at"] = job.finished_at or utcnow()
        values["error"] = None
        if failed:
            reasons = sorted(
                {
                    e
                    for (e,) in conn.execute(
                        select(training_chunks.c.error).where(
                            training_chunks.c.job_id == job_id,
                            training_chunks.c.status == CHUNK_FAILED,
                        )
                    )
                    if e
                }
            )
            values["error"] = "; ".join(reasons)[:MAX_REASON] or None
    update_job(conn, job_id, only_if_open=False, **values)
    return get_job(conn, job_id)


def fail_job(engine: Engine, job_id: str, reason: str) -> None:
    """Fail an open job outright (nothing could be submitted)."""
    with engine.begin() as conn:
        update_job(conn, job_id, status=FAILED, error=reason[:MAX_REASON], finished_at=utcnow())
