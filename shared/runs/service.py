"""Starting runs: on a timer tick, on demand (HTTP) or from the CLI.

``start_run`` creates the run once per run key (a second caller for the same key gets the
existing run back and does nothing), prepares its chunks, hands them to the executor and records
the job. Failures before scoring mark the run failed with the reason; they do not raise out of
the timer, which would only make the host retry a window that is already recorded as failed.

On-demand runs are split in two, because preparing grows with the fleet and an HTTP request must
not (Azure cuts HTTP triggers at 230 s): ``request_run`` records the run (``pending``) and sends
one message to the run-request queue, and returns at once; the queue trigger calls
``handle_run_request``, which prepares and submits it. That step is idempotent: a redelivered
message for a run already submitted, or finished, does nothing. A failed attempt raises (so the
host retries it, ``maxDequeueCount`` times) after noting its reason on the run; when the host
gives up, ``handle_poisoned_run_request`` fails the run with that reason. Whatever a message
contains, neither handler raises because of it: a malformed message or an unknown run id is
logged and dropped.
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
from shared.runs.reconcile import reconcile_runs
from shared.runs.records import Run, RunFilters
from shared.runs.windows import Window, due_windows

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 100


class RunRequestError(ValueError):
    """An on-demand run request that cannot be honoured (the message says why)."""


class RunQueueError(RuntimeError):
    """The run was recorded but its preparation could not be queued (it is failed with the
    reason; a retry with ``rerun`` starts a new attempt)."""


# What handling a run-request message did (logged by the trigger; tests assert on it).
PREPARED = "prepared"
ALREADY_SUBMITTED = "already_submitted"
ALREADY_FINISHED = "already_finished"
UNKNOWN_RUN = "unknown_run"
MALFORMED = "malformed"
FAILED_RUN = "failed_run"


def _create(
    ctx: AppContext,
    window: Window,
    trigger: str,
    filters: RunFilters | None,
    rerun: bool,
    executor_name: str | None,
) -> tuple[Run, bool]:
    """Validate and record the run for this key (a new attempt with ``rerun``)."""
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
    else:
        log.info(
            "run created", extra={"run_id": run.run_id, "window": str(window), "trigger": trigger}
        )
    return run, created


def start_run(
    ctx: AppContext,
    window: Window,
    trigger: str,
    filters: RunFilters | None = None,
    rerun: bool = False,
    executor_name: str | None = None,
) -> tuple[Run, bool]:
    """Create, prepare and submit the run for ``window`` in this call; returns (run, created).

    What the timer does (its invocation may run for ``functionTimeout``); on-demand callers use
    :func:`request_run`."""
    run, created = _create(ctx, window, trigger, filters, rerun, executor_name)
    if not created:
        return run, False
    try:
        _prepare_and_submit(ctx, run, run.executor)
    except Exception as exc:
        log.exception("run failed before scoring", extra={"run_id": run.run_id})
        records.fail_run(ctx.engine, run.run_id, f"{type(exc).__name__}: {exc}")
    return records.get_run(ctx.engine, run.run_id), True


def request_run(
    ctx: AppContext,
    window: Window,
    trigger: str,
    filters: RunFilters | None = None,
    rerun: bool = False,
    executor_name: str | None = None,
) -> tuple[Run, bool]:
    """Record the run for ``window`` and queue its preparation; returns (run, created) at once.

    Idempotent by run key: a second request for the same window and filters returns the
    existing run and queues nothing. Raises :class:`RunQueueError` when the message cannot be
    sent (the run is then failed with that reason rather than left pending for ever)."""
    from shared.queues import RunRequest, run_queue_for

    run, created = _create(ctx, window, trigger, filters, rerun, executor_name)
    if not created:
        return run, False
    try:
        message_id = run_queue_for(ctx.settings).send(RunRequest(run.run_id))
    except Exception as exc:
        reason = f"could not queue the run's preparation: {type(exc).__name__}: {exc}"
        log.exception("run request not queued", extra={"run_id": run.run_id})
        records.fail_run(ctx.engine, run.run_id, reason)
        raise RunQueueError(reason) from exc
    log.info(
        "run queued",
        extra={"run_id": run.run_id, "queue": ctx.settings.runs_queue, "message_id": message_id},
    )
    return run, True


def handle_run_request(ctx: AppContext, body: bytes | str | None, dequeue_count: int = 1) -> str:
    """What the run-request queue trigger does with one message; returns what happened.

    Raises only for failures a retry may cure (SQL, storage, the executor's backend), after
    noting the reason on the run, so the host redelivers the message."""
    from shared.queues import MalformedRunRequest, RunRequest

    try:
        request = RunRequest.parse(body)
    except MalformedRunRequest as exc:
        log.error("malformed run request dropped", extra={"reason": str(exc), "body": _peek(body)})
        return MALFORMED
    run = records.get_run(ctx.engine, request.run_id)
    if run is None:
        log.error("run request for an unknown run dropped", extra={"run_id": request.run_id})
        return UNKNOWN_RUN
    if run.terminal:
        log.info(
            "run request for a finished run ignored",
            extra={"run_id": run.run_id, "status": run.status},
        )
        return ALREADY_FINISHED
    if run.job_id:
        # A redelivery after the attempt that submitted the job (e.g. its instance stopped
        # before the host deleted the message): the job is the reconciler's now.
        log.info(
            "run request for a submitted run ignored",
            extra={"run_id": run.run_id, "job_id": run.job_id},
        )
        return ALREADY_SUBMITTED
    log.info(
        "preparing requested run", extra={"run_id": run.run_id, "dequeue_count": dequeue_count}
    )
    try:
        _prepare_and_submit(ctx, run, run.executor)
    except Exception as exc:
        reason = f"attempt {dequeue_count} failed: {type(exc).__name__}: {exc}"
        log.exception("run preparation failed; the queue retries it", extra={"run_id": run.run_id})
        with ctx.engine.begin() as conn:
            # Back to pending for the next delivery; the reason stays for the poison handler.
            records.update_run(
                conn, run.run_id, only_if_active=True, status=records.PENDING, error=reason
            )
        raise
    if run.error:  # a previous attempt's reason; this one got through
        with ctx.engine.begin() as conn:
            records.update_run(conn, run.run_id, only_if_active=True, error=None)
    return PREPARED


def handle_poisoned_run_request(ctx: AppContext, body: bytes | str | None) -> str:
    """What the poison-queue trigger does: fail the run whose preparation the host gave up on,
    with the last attempt's reason. Never raises because of the message."""
    from shared.queues import MalformedRunRequest, RunRequest

    try:
        request = RunRequest.parse(body)
    except MalformedRunRequest as exc:
        log.error(
            "malformed poisoned run request dropped",
            extra={"reason": str(exc), "body": _peek(body)},
        )
        return MALFORMED
    run = records.get_run(ctx.engine, request.run_id)
    if run is None:
        log.error("poisoned run request for an unknown run", extra={"run_id": request.run_id})
        return UNKNOWN_RUN
    if run.terminal:
        return ALREADY_FINISHED
    if run.job_id:
        log.warning(
            "poisoned run request for a submitted run; the reconciler follows its job",
            extra={"run_id": run.run_id, "job_id": run.job_id},
        )
        return ALREADY_SUBMITTED
    reason = (
        "preparation failed on every delivery of its queue message (moved to "
        f"{ctx.settings.runs_queue}-poison)"
        + (f"; last error: {run.error}" if run.error else "; no error was recorded")
    )
    records.fail_run(ctx.engine, run.run_id, reason)
    log.error("run failed: its request was poisoned", extra={"run_id": run.run_id})
    return FAILED_RUN


def _peek(body: bytes | str | None, limit: int = 200) -> str:
    if body is None:
        return ""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body)
    return text[:limit]


def _prepare_and_submit(ctx: AppContext, run: Run, executor_name: str) -> None:
    from shared.runs.prepare import prepare_run

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
        reason = f"executor {executor.name} job {submission.state}: {submission.message}"
        # Chunks scored before the failure keep their predictions (the blob trigger records
        # them and the run ends partial); the others fail now, and the run fails when none
        # was scored. Whatever is left pending waits for its file or the stall timeout.
        from shared.runs.reconcile import fail_unscored_chunks

        try:
            fail_unscored_chunks(ctx, run.run_id, reason)
        except Exception:  # noqa: BLE001 - storage or SQL away: the stall timeout ends the run
            log.exception("could not fail the run's unscored chunks", extra={"run_id": run.run_id})
        with ctx.engine.begin() as conn:
            records.update_run(conn, run.run_id, only_if_active=True, error=reason)
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
    """What the timer does: reconcile open runs, complete open training jobs (an Azure ML job's
    models are registered before the window is scored, ``shared.training``), run every due
    window (catching up), then delete what retention no longer keeps, in bounded batches
    (``shared.retention``)."""
    now = now or utcnow()
    reconcile_runs(ctx, now=now)
    from shared.training.service import collect_training

    try:
        collect_training(ctx, now)
    except Exception:  # noqa: BLE001 - scoring goes on with the models already active
        log.exception("completing training jobs failed; retried on the next tick")
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
    from shared.retention import purge

    try:
        purge(
            ctx.engine,
            now.replace(tzinfo=None),
            settings.readings_retention_days,
            settings.predictions_retention_days,
        )
    except Exception:  # noqa: BLE001 - the runs are started; what is left goes next tick
        log.exception("retention purge failed; retried on the next tick")
    return started
