"""The reconciler: finishes runs that will not finish by themselves.

Called on every timer tick and by the status API. For each open run it asks the executor about
its job: a failed or canceled job fails the chunks still pending (so chunks already recorded
keep their predictions and the run ends ``partial``, or ``failed`` if none were recorded). A run
with no progress for ``RUN_TIMEOUT_MINUTES`` (its last progress: created, submitted, or a chunk
recorded) is treated the same way, with a "stalled" reason.

The status API may be polled every few seconds by many clients; asking Azure ML on each poll
would cost a management call each time. :func:`reconcile_run_if_due` reconciles a run at most
once per ``RECONCILE_INTERVAL_SECONDS``: it claims the reconciliation with a conditional update
of the run's ``updated_at`` (only the caller whose update matched reconciles, on any number of
instances), so no schema change and no process-local state is needed. ``updated_at`` therefore
means "last touched", and progress for the stall timeout is measured from the timestamps above.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from shared.clock import utcnow
from shared.context import AppContext
from shared.db.schema import run_chunks, runs
from shared.executors.base import CANCELED, FAILED
from shared.runs import records

log = logging.getLogger(__name__)


def _pending_chunks(ctx: AppContext, run_id: str) -> list[str]:
    with ctx.engine.connect() as conn:
        return [
            c
            for (c,) in conn.execute(
                select(run_chunks.c.chunk_id).where(
                    run_chunks.c.run_id == run_id,
                    run_chunks.c.status == records.CHUNK_WRITTEN,
                )
            )
        ]


def fail_unscored_chunks(ctx: AppContext, run_id: str, reason: str) -> list[str]:
    """After the executor failed (a worker died, the job failed to submit): fail the chunks
    still pending that have no predictions file, so none stays ``written`` for ever; a chunk
    whose file is there is left to the blob trigger, which records it. Returns the ids failed.
    """
    from shared.blobs import predictions_blob
    from shared.runs.recording import fail_chunks

    container = ctx.settings.predictions_container
    unscored = [
        c
        for c in _pending_chunks(ctx, run_id)
        if not ctx.store.exists(container, predictions_blob(run_id, c))
    ]
    if unscored:
        fail_chunks(ctx, run_id, unscored, reason)
    log.warning(
        "executor failed; chunks without predictions failed",
        extra={"run_id": run_id, "reason": reason, "failed_chunks": len(unscored)},
    )
    return unscored


def _give_up(ctx: AppContext, run: records.Run, reason: str) -> None:
    from shared.runs.recording import fail_chunks

    pending = _pending_chunks(ctx, run.run_id)
    log.warning(
        "giving up on run",
        extra={"run_id": run.run_id, "reason": reason, "pending_chunks": len(pending)},
    )
    if pending:
        fail_chunks(ctx, run.run_id, pending, reason)
    # A run with no chunks at all (or already counted) is failed outright.
    records.fail_run(ctx.engine, run.run_id, reason)


def reconcile_run(ctx: AppContext, run: records.Run, now: datetime | None = None) -> records.Run:
    """Reconcile one run (no-op for finished runs); returns it as it now stands."""
    if run.terminal:
        return run
    now = now or utcnow()
    if run.job_id and run.executor != "local":
        try:
            from shared.executors import make_executor

            status = make_executor(ctx.settings, run.executor).status(run.job_id)
        except Exception as exc:  # noqa: BLE001 - the backend may be unreachable for a while
            log.warning("could not get job status", extra={"run_id": run.run_id, "error": str(exc)})
            status = None
        if status is not None and status.state in (FAILED, CANCELED):
            _give_up(
                ctx,
                run,
                f"{run.executor} job {run.job_id} {status.state}: {status.message or 'no message'}",
            )
            return records.get_run(ctx.engine, run.run_id)
        if status is not None and status.state == "running" and run.status == records.SUBMITTED:
            with ctx.engine.begin() as conn:
                records.update_run(conn, run.run_id, only_if_active=True, status=records.SCORING)
    timeout = timedelta(minutes=ctx.settings.run_timeout_minutes)
    last_progress = _last_progress(ctx, run) or now
    if now - last_progress > timeout:
        _give_up(
            ctx,
            run,
            f"stalled: no progress for {ctx.settings.run_timeout_minutes:g} "
            f"minutes ({run.n_chunks_recorded} of {run.n_chunks} chunks recorded)",
        )
    return records.get_run(ctx.engine, run.run_id)


def _last_progress(ctx: AppContext, run: records.Run) -> datetime | None:
    """When the run last moved: created, submitted, or its latest chunk recorded or failed."""
    with ctx.engine.connect() as conn:
        chunk = conn.execute(
            select(func.max(run_chunks.c.recorded_at)).where(run_chunks.c.run_id == run.run_id)
        ).scalar_one_or_none()
    moments = [t for t in (run.created_at, run.submitted_at, chunk) if t is not None]
    return max(moments) if moments else None


def claim_reconcile(ctx: AppContext, run_id: str, now: datetime | None = None) -> bool:
    """Claim this interval's reconciliation of an open run: True for exactly one caller per
    ``RECONCILE_INTERVAL_SECONDS`` (the conditional update matches once), False otherwise."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=ctx.settings.reconcile_interval_seconds)
    with ctx.engine.begin() as conn:
        result = conn.execute(
            update(runs)
            .where(
                runs.c.run_id == run_id,
                runs.c.status.notin_(records.TERMINAL),
                runs.c.updated_at <= cutoff,
            )
            .values(updated_at=now),
            execution_options={"preserve_rowcount": True},
        )
    return result.rowcount == 1


def reconcile_run_if_due(
    ctx: AppContext, run: records.Run, now: datetime | None = None
) -> records.Run:
    """Reconcile ``run`` unless it was reconciled (or touched) less than
    ``RECONCILE_INTERVAL_SECONDS`` ago; returns it as it now stands. For the status API."""
    if run.terminal:
        return run
    now = now or utcnow()
    if not claim_reconcile(ctx, run.run_id, now):
        return run
    return reconcile_run(ctx, records.get_run(ctx.engine, run.run_id), now)


def reconcile_runs(ctx: AppContext, now: datetime | None = None) -> list[records.Run]:
    """Reconcile every open run; returns the runs whose status changed."""
    with ctx.engine.connect() as conn:
        open_ids = [
            r
            for (r,) in conn.execute(
                select(runs.c.run_id).where(runs.c.status.notin_(records.TERMINAL))
            )
        ]
    changed = []
    for run_id in open_ids:
        before = records.get_run(ctx.engine, run_id)
        after = reconcile_run(ctx, before, now)
        if after is not None and after.status != before.status:
            changed.append(after)
    return changed
