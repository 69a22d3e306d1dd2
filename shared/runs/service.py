"""Starting runs: on a timer tick, on demand (HTTP) or from the CLI.

``start_run`` creates the run once per run key (a second caller for the same key gets the
existing run back and does nothing), prepares its chunks, hands them to the executor and records
the job. Failures before scoring mark the run failed with the reason; they do not raise out of
the timer, which would only make the host retry a window that is already recorded as failed.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from shared.clock import utcnow
from shared.context import AppContext
from shared.executors import ScoringJob, make_executor
from shared.executors.base import CANCELED, COMPLETED, FAILED, QUEUED
from shared.runs import records
from shared.runs.prepare import prepare_run
from shared.runs.reconcile import reconcile_runs
from shared.runs.records import Run, RunFilters
from shared.runs.windows import Window, due_windows

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 100


class RunRequestError(ValueError):
    """An on-demand run request that cannot be honoured (the message says why)."""


def start_run(
    ctx: AppContext,
    window: Window,
    trigger: str,
    filters: RunFilters | None = None,
    rerun: bool = False,
    executor_name: str | None = None,
) -> tuple[Run, bool]:
    """Create, prepare and submit the run for ``window``; returns (run, created)."""
    filters = filters or RunFilters()
    settings = ctx.settings
    if trigger not in records.TRIGGERS:
        raise RunRequestError(f"unknown trigger {trigger!r}")
    if window.length > timedelta(hours=settings.max_window_hours):
        raise RunRequestError(
            f"window of {window.length} is longer than "
            f"MAX_WINDOW_HOURS={settings.max_window_hours:g}"
        )
    executor_name = executor_name or settings.executor
    attempt = 1
    while True:
        run, created = records.create_run(
            ctx.engine, window, trigger, executor_name, filters, attempt
        )
        if created or not rerun or trigger == "timer" or attempt >= MAX_ATTEMPTS:
            break
        attempt += 1
    if not created:
        log.info(
            "run already exists for this window", extra={"run_id": run.run_id, "status": run.status}
        )
        return run, False
    log.info("run created", extra={"run_id": run.run_id, "window": str(window), "trigger": trigger})
    try:
        _prepare_and_submit(ctx, run, executor_name)
    except Exception as exc:
        log.exception("run failed before scoring", extra={"run_id": run.run_id})
        records.fail_run(ctx.engine, run.run_id, f"{type(exc).__name__}: {exc}")
    return records.get_run(ctx.engine, run.run_id), True


def _prepare_and_submit(ctx: AppContext, run: Run, executor_name: str) -> None:
    settings = ctx.settings
    prepared = prepare_run(ctx, run)
    with ctx.engine.begin() as conn:
        records.update_run(
            conn,
            run.run_id,
            only_if_active=True,
            n_sensors=prepared.n_sensors,
            n_sensors_without_model=len(prepared.without_model),
            n_chunks=len(prepared.chunks),
            timings=prepared.seconds,
        )
    if not prepared.chunks:
        reason = (
            f"no sensor with readings in {run.window} has an active model "
            f"({len(prepared.without_model)} sensor(s) without one)"
            if prepared.without_model
            else f"no readings in {run.window}"
        )
        records.fail_run(ctx.engine, run.run_id, reason)
        return
    executor = make_executor(settings, executor_name)
    job = ScoringJob(
        run_id=run.run_id,
        window_label=str(run.window),
        chunks=tuple(prepared.chunks),
        chunks_container=settings.chunks_container,
        models_container=settings.models_container,
        predictions_container=settings.predictions_container,
    )
    with ctx.engine.begin() as conn:
        records.update_run(
            conn, run.run_id, only_if_active=True, status=records.SUBMITTED, submitted_at=utcnow()
        )
    started = time.perf_counter()
    submission = executor.submit(job)
    elapsed = time.perf_counter() - started
    status = {QUEUED: records.SUBMITTED, FAILED: records.FAILED, CANCELED: records.FAILED}.get(
        submission.state, records.SCORING
    )
    with ctx.engine.begin() as conn:
        records.update_run(
            conn, run.run_id, only_if_active=True, job_id=submission.job_id, job_url=submission.url
        )
    records.set_timing(
        ctx.engine, run.run_id, "score" if submission.state == COMPLETED else "submit", elapsed
    )
    if status == records.FAILED:
        records.fail_run(
            ctx.engine,
            run.run_id,
            f"executor {executor.name} job {submission.state}: {submission.message}",
        )
        return
    with ctx.engine.begin() as conn:
        records.update_run(conn, run.run_id, only_if_active=True, status=status)
    log.info(
        "run submitted",
        extra={
            "run_id": run.run_id,
            "job_id": submission.job_id,
            "state": submission.state,
            "chunks": len(job.chunks),
        },
    )


def scheduled_tick(ctx: AppContext, now: datetime | None = None) -> list[Run]:
    """What the timer does: reconcile open runs, then run every due window (catching up)."""
    now = now or utcnow()
    reconcile_runs(ctx, now=now)
    settings = ctx.settings
    windows = due_windows(
        settings.scoring_schedule,
        now,
        records.last_scheduled_end(ctx.engine),
        settings.catchup_max_windows,
    )
    started = []
    for window in windows:
        run, created = start_run(ctx, window, "timer")
        if created:
            started.append(run)
    return started
