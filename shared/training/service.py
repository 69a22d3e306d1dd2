"""Retraining on a schedule: :func:`retrain_due` decides which sensors need a new model version,
writes their training chunks, and hands a training job to the executor that scores runs (the
local process pool, or an Azure ML pipeline job on the cluster); completion registers each
chunk's models through the fitness gate (:mod:`shared.training.registration`).

Window
    The trailing window ``[end - TRAIN_WINDOW_HOURS, end)`` with ``end`` = ``now`` floored to a
    bucket (and the start floored too), so training sees whole buckets, as scoring does.

Which sensors (the *due* rule)
    Every sensor with buckets in the window (``bucket_aggregates``, never the raw readings) that
    either has no active model (first training is automatic) or whose active model's training
    window ended before the latest occurrence of ``TRAINING_SCHEDULE`` (floored to a bucket). On
    time, that is "ended at least one schedule interval ago"; and whatever the timer's delay, a
    sensor is trained at most once per occurrence and never skipped. A second call at the same
    ``now`` finds nothing due; a sensor trained by hand since the latest occurrence waits for
    the next one.

The job
    One training key (window and spec, see ``shared.models.training.training_key``) per call.
    Due sensors that already have a version of this key (an earlier attempt trained them) are
    not trained again: their versions are gated again instead, so a call that died after
    registering completes the work. The others get the next free version each and go into
    training chunks (:mod:`shared.training.prepare`: streamed from SQL, bounded memory; sensors
    with fewer than ``MIN_TRAINING_BUCKETS`` buckets are reported, not trained), and the job is
    submitted with ``executor.submit_training``. The call returns then: with ``EXECUTOR=azureml``
    while the cluster trains; with the local executor, whose job is synchronous, after it has
    also registered the results (:func:`collect_training`), as the timer's later calls do for
    Azure ML jobs. While a job is open no other is started (its sensors would be trained twice);
    a job that stalls for ``RUN_TIMEOUT_MINUTES``, or whose Azure ML job failed, is ended by
    :func:`collect_training` (every retraining call and every scoring tick runs it), and its
    sensors are due again.

Fitness gate
    A registered version becomes active only when its threshold and calibration are finite
    (:func:`shared.models.registry.unfit_reason`) and no operator activated or rolled back a
    version after the job began (the operator's choice stands until the next training).
    Otherwise the old version stays active and the sensor is reported with the reason. The
    registry keeps every version: ``models rollback`` returns to the newest earlier fit version.

Reports
    Each call writes ``reports/training/<window end>.json`` (a re-run overwrites it); each job,
    when it ends, ``reports/training/jobs/<job_id>.json`` with what its chunks registered.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select

from shared.blobs import training_job_report_blob, training_report_blob
from shared.clock import utcnow
from shared.context import AppContext
from shared.db.schema import active_models, bucket_aggregates, models, training_chunks
from shared.features import bucket_floor
from shared.models.registry import next_versions
from shared.models.training import (
    DEFAULT_ESTIMATOR,
    estimator_features,
    estimator_templates,
    training_key,
)
from shared.runs.windows import Window, last_occurrence
from shared.training import jobs
from shared.training.registration import (
    KEPT_FAILED,
    KEPT_OPERATOR,
    KEPT_TOO_FEW_BUCKETS,
    KEPT_UNFIT,
    REGISTERED,
    ChunkOutcome,
    Kept,
    fail_chunks,
    gate,
    register_chunk,
)

log = logging.getLogger(__name__)

__all__ = [
    "KEPT_FAILED",
    "KEPT_OPERATOR",
    "KEPT_TOO_FEW_BUCKETS",
    "KEPT_UNFIT",
    "Kept",
    "RetrainingReport",
    "collect_training",
    "retrain_due",
    "training_window",
]


@dataclass
class RetrainingReport:
    """What one :func:`retrain_due` call did (``activated`` and ``kept`` include what its job
    registered when the executor is synchronous; an Azure ML job's are in its job report)."""

    window: Window
    due_before: datetime
    sensors_with_data: int = 0
    due_first: int = 0
    due_stale: int = 0
    chunks: int = 0
    job_id: str | None = None
    job_status: str | None = None
    waiting_for: str | None = None
    activated: list[tuple[str, str, int]] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    training_keys: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def due(self) -> int:
        return self.due_first + self.due_stale

    def as_dict(self, limit: int | None = None) -> dict[str, Any]:
        return {
            "window": [self.window.start.isoformat(), self.window.end.isoformat()],
            "due_before": self.due_before.isoformat(),
            "sensors_with_data": self.sensors_with_data,
            "due": {"first_training": self.due_first, "retraining": self.due_stale},
            "job": {
                "job_id": self.job_id,
                "status": self.job_status,
                "chunks": self.chunks,
                "waiting_for": self.waiting_for,
            },
            "activated": len(self.activated),
            "kept": len(self.kept),
            "kept_sensors": [k.as_dict() for k in self.kept[:limit]],
            "training_keys": self.training_keys,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class _Active:
    version: int
    train_end: datetime


def training_window(ctx: AppContext, now: datetime) -> Window:
    """The trailing window a retraining at ``now`` uses, aligned to buckets."""
    bucket = ctx.settings.bucket_seconds
    end = bucket_floor(now, bucket)
    return Window(bucket_floor(end - timedelta(hours=ctx.settings.train_window_hours), bucket), end)


def _sensors_with_data(ctx: AppContext, window: Window) -> list[tuple[str, str]]:
    """Sensors with a bucket in the window, from the per-bucket aggregates (one row per sensor
    and bucket, however often sensors report), not from the raw readings."""
    a = bucket_aggregates
    query = (
        select(a.c.device, a.c.sensor)
        .where(
            a.c.bucket_seconds == ctx.settings.bucket_seconds,
            a.c.bucket_start >= window.start,
            a.c.bucket_start < window.end,
        )
        .distinct()
    )
    with ctx.engine.connect() as conn:
        return sorted((d, s) for d, s in conn.execute(query))


def _active(conn) -> dict[tuple[str, str], _Active]:
    """The active version of every sensor, with its training window end."""
    query = select(
        active_models.c.device, active_models.c.sensor, active_models.c.version, models.c.train_end
    ).join(
        models,
        and_(
            models.c.device == active_models.c.device,
            models.c.sensor == active_models.c.sensor,
            models.c.version == active_models.c.version,
        ),
    )
    return {(d, s): _Active(v, end) for d, s, v, end in conn.execute(query)}


def retrain_due(
    ctx: AppContext,
    now: datetime | None = None,
    *,
    estimator: str | None = None,
    workers: int | None = None,
    executor_name: str | None = None,
) -> RetrainingReport:
    """Train a new version for every due sensor on the executor; see the module doc.

    Parameters
    ----------
    now : datetime, optional
        Naive UTC; default the current time.
    estimator : str, optional
        A name from ``estimator_templates()``; default the product's detector.
    workers : int, optional
        Processes of the local executor (default ``LOCAL_WORKERS``; 1 trains in this process).
    executor_name : str, optional
        ``local`` or ``azureml``; default ``EXECUTOR``.
    """
    started = time.perf_counter()
    now = now or utcnow()
    settings = ctx.settings
    estimator = estimator or DEFAULT_ESTIMATOR
    if estimator not in estimator_templates():
        raise ValueError(
            f"unknown estimator {estimator!r}; known: {', '.join(estimator_templates())}"
        )
    executor_name = executor_name or settings.executor
    collect_training(ctx, now)  # what earlier jobs left: registrations, failures, stalls

    window = training_window(ctx, now)
    due_before = bucket_floor(
        last_occurrence(settings.training_schedule, now), settings.bucket_seconds
    )
    report = RetrainingReport(window, due_before)
    with_data = _sensors_with_data(ctx, window)
    report.sensors_with_data = len(with_data)
    with ctx.engine.connect() as conn:
        active = _active(conn)
    due: list[tuple[str, str]] = []
    for key in with_data:
        current = active.get(key)
        if current is None:
            report.due_first += 1
            due.append(key)
        elif current.train_end < due_before:
            report.due_stale += 1
            due.append(key)
    del active, with_data

    features = estimator_features(estimator)
    key = training_key(
        window.start,
        window.end,
        estimator,
        features,
        settings.bucket_seconds,
        settings.target_false_alarm_rate,
    )
    if due:
        report.training_keys.append(key)
    todo = _regate_trained(ctx, due, key, report)
    if todo:
        _train(ctx, report, todo, key, estimator, features, executor_name, workers)
    report.seconds = time.perf_counter() - started
    if report.due:
        ctx.store.upload(
            settings.reports_container,
            training_report_blob(window.end),
            json.dumps(report.as_dict(), indent=1).encode(),
            content_type="application/json",
        )
    log.info("retraining done", extra={"retraining": report.as_dict(limit=20)})
    return report


def _regate_trained(
    ctx: AppContext, due: list[tuple[str, str]], key: str, report: RetrainingReport
) -> list[tuple[str, str]]:
    """Gate again the versions of ``key`` that due sensors already have (an earlier attempt
    registered them); return the due sensors without one, which are to be trained."""
    if not due:
        return []
    wanted = set(due)
    with ctx.engine.begin() as conn:
        rows = [
            r
            for r in conn.execute(
                select(
                    models.c.device,
                    models.c.sensor,
                    models.c.version,
                    models.c.threshold,
                    models.c.calibration,
                    models.c.created_at,
                ).where(models.c.training_key == key)
            )
            if (r.device, r.sensor) in wanted
        ]
        if rows:
            activated, kept = gate(conn, [tuple(r) for r in rows])
            report.activated += activated
            report.kept += kept
    trained = {(r.device, r.sensor) for r in rows}
    return [k for k in due if k not in trained]


def _train(
    ctx: AppContext,
    report: RetrainingReport,
    todo: list[tuple[str, str]],
    key: str,
    estimator: str,
    features: Sequence[str],
    executor_name: str,
    workers: int | None,
) -> None:
    """Create the job, write its chunks, submit it; with a synchronous executor, collect it."""
    from shared.executors import TrainingJob, make_executor
    from shared.executors.base import CANCELED, COMPLETED, FAILED, QUEUED
    from shared.training.prepare import write_training_chunks

    settings = ctx.settings
    busy = jobs.open_jobs(ctx.engine)
    job = (
        None if busy else jobs.create_job(ctx.engine, key, report.window, estimator, executor_name)
    )
    if job is None:
        other = busy[0].job_id if busy else "another caller's job for this training key"
        report.waiting_for = other
        log.info("retraining waits for an open training job", extra={"job_id": other})
        return
    report.job_id = job.job_id
    try:
        with ctx.engine.connect() as conn:
            versions = next_versions(conn, todo)
        prepared = write_training_chunks(ctx, job, todo, versions, features)
    except Exception as exc:
        log.exception("training chunks could not be written", extra={"job_id": job.job_id})
        jobs.fail_job(ctx.engine, job.job_id, f"preparation failed: {type(exc).__name__}: {exc}")
        report.job_status = jobs.FAILED
        raise
    _report_too_few(ctx, report, prepared.too_few)
    with ctx.engine.begin() as conn:
        jobs.update_job(
            conn, job.job_id, n_sensors=prepared.n_sensors, n_chunks=len(prepared.chunks)
        )
    report.chunks = len(prepared.chunks)
    if not prepared.chunks:
        with ctx.engine.begin() as conn:
            jobs.update_job(
                conn,
                job.job_id,
                status=jobs.COMPLETED,
                finished_at=utcnow(),
                error="nothing to train: every due sensor had too few buckets",
            )
        report.job_status = jobs.COMPLETED
        return

    executor = make_executor(settings, executor_name, workers)
    training_job = TrainingJob(
        job_id=job.job_id,
        window_label=str(report.window),
        chunks=tuple(prepared.chunks),
        chunks_container=settings.chunks_container,
        models_container=settings.models_container,
    )
    with ctx.engine.begin() as conn:
        jobs.update_job(conn, job.job_id, status=jobs.SUBMITTED, submitted_at=utcnow())
    submission = executor.submit_training(training_job)
    status = {QUEUED: jobs.SUBMITTED, FAILED: jobs.SUBMITTED, CANCELED: jobs.SUBMITTED}.get(
        submission.state, jobs.TRAINING
    )
    with ctx.engine.begin() as conn:
        jobs.update_job(
            conn,
            job.job_id,
            backend_job_id=submission.job_id,
            job_url=submission.url,
            status=status,
        )
    log.info(
        "training job submitted",
        extra={
            "job_id": job.job_id,
            "backend_job_id": submission.job_id,
            "state": submission.state,
        },
    )
    if submission.state in (COMPLETED, FAILED, CANCELED):
        # Over already (the local pool): register what it wrote; chunks without a summary
        # fail now, with the executor's reason when it failed.
        reason = (
            f"executor {executor.name} job {submission.state}: {submission.message}"
            if submission.state != COMPLETED
            else "the training step wrote no summary for this chunk"
        )
        outcomes = _collect_job(ctx, jobs.get_job(ctx.engine, job.job_id), finished_reason=reason)
        for outcome in outcomes:
            report.activated += outcome.activated
            report.kept += outcome.kept
    current = jobs.get_job(ctx.engine, job.job_id)
    report.job_status = current.status if current else None


def _report_too_few(ctx: AppContext, report: RetrainingReport, too_few) -> None:
    if not too_few:
        return
    min_buckets = ctx.settings.min_training_buckets
    with ctx.engine.connect() as conn:
        from shared.training.registration import active_versions

        active = active_versions(conn, [(d, s) for d, s, _ in too_few])
    for device, sensor, n in too_few:
        current = active.get((device, sensor))
        report.kept.append(
            Kept(
                device,
                sensor,
                KEPT_TOO_FEW_BUCKETS,
                f"{n} buckets in the window; MIN_TRAINING_BUCKETS is {min_buckets}",
                None if current is None else current.version,
            )
        )


def collect_training(ctx: AppContext, now: datetime | None = None) -> list[ChunkOutcome]:
    """Complete open training jobs: register every chunk whose summary is there, fail the
    chunks of a job whose executor job failed or that made no progress for
    ``RUN_TIMEOUT_MINUTES``; returns the outcomes of the chunks registered or failed now.

    Idempotent (a chunk is registered once): the retraining timer and every scoring tick call
    it, so an Azure ML job's models are registered before the next scoring run."""
    now = now or utcnow()
    outcomes: list[ChunkOutcome] = []
    for job in jobs.open_jobs(ctx.engine):
        outcomes += _collect_job(ctx, job, now=now)
    return outcomes


def _collect_job(
    ctx: AppContext,
    job: jobs.Job,
    *,
    now: datetime | None = None,
    finished_reason: str | None = None,
) -> list[ChunkOutcome]:
    """Register the job's chunks that have a summary; with ``finished_reason`` (the backend job
    is over) fail the others with it, else apply the backend status and the stall timeout."""
    from shared.executors import make_executor
    from shared.executors.base import CANCELED, FAILED

    outcomes = []
    pending = []
    # Right after a synchronous job, chunks that a concurrent collect failed as stalled while
    # it ran are looked at too: their summaries are there now.
    chunks = [
        c
        for c in jobs.chunk_rows(ctx.engine, job.job_id)
        if c.status == jobs.CHUNK_WRITTEN
        or (finished_reason is not None and c.status == jobs.CHUNK_FAILED)
    ]
    for chunk in chunks:
        outcome = register_chunk(ctx, job, chunk)
        if outcome.outcome == REGISTERED or outcome.outcome == "refused":
            outcomes.append(outcome)
        elif outcome.outcome != "duplicate" and chunk.status == jobs.CHUNK_WRITTEN:
            pending.append(chunk.chunk_id)
    reason = finished_reason
    if pending and reason is None and job.backend_job_id and job.executor != "local":
        try:
            status = make_executor(ctx.settings, job.executor).status(job.backend_job_id)
        except Exception as exc:  # noqa: BLE001 - the backend may be unreachable for a while
            log.warning(
                "could not get training job status", extra={"job_id": job.job_id, "error": str(exc)}
            )
            status = None
        if status is not None and status.state in (FAILED, CANCELED):
            reason = (
                f"{job.executor} job {job.backend_job_id} {status.state}: "
                f"{status.message or 'no message'}"
            )
    if reason is None and (pending or job.status == jobs.PREPARING):
        timeout = timedelta(minutes=ctx.settings.run_timeout_minutes)
        if (now or utcnow()) - _last_progress(ctx, job) > timeout:
            reason = (
                f"stalled: no progress for {ctx.settings.run_timeout_minutes:g} minutes "
                f"({job.status}, {len(pending)} chunk(s) not registered)"
            )
    if reason is not None:
        if pending:
            for chunk_id in fail_chunks(ctx, job.job_id, pending, reason):
                outcomes.append(ChunkOutcome("refused", job.job_id, chunk_id, reason=reason))
        current = jobs.get_job(ctx.engine, job.job_id)
        if current is not None and not current.terminal:
            jobs.fail_job(ctx.engine, job.job_id, reason)
    finished = jobs.get_job(ctx.engine, job.job_id)
    if finished is not None and finished.terminal and outcomes:
        write_job_report(ctx, finished)
    return outcomes


def _last_progress(ctx: AppContext, job: jobs.Job) -> datetime:
    with ctx.engine.connect() as conn:
        last_chunk = conn.execute(
            select(func.max(training_chunks.c.done_at)).where(
                training_chunks.c.job_id == job.job_id
            )
        ).scalar_one_or_none()
    return max(t for t in (job.created_at, job.submitted_at, last_chunk) if t is not None)


def write_job_report(ctx: AppContext, job: jobs.Job) -> None:
    """``reports/training/jobs/<job_id>.json``: the job and what each chunk registered."""
    chunks = []
    for row in jobs.chunk_rows(ctx.engine, job.job_id):
        result = json.loads(row.result) if row.result else {}
        chunks.append(
            {
                "chunk_id": row.chunk_id,
                "status": row.status,
                "n_sensors": row.n_sensors,
                "error": row.error,
                "activated": result.get("n_activated", 0),
                "kept": result.get("kept", []),
            }
        )
    body = {"job": job.as_dict(), "chunks": chunks}
    ctx.store.upload(
        ctx.settings.reports_container,
        training_job_report_blob(job.job_id),
        json.dumps(body, indent=1, default=str).encode(),
        content_type="application/json",
    )
