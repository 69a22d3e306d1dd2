"""The reconciler: finishes runs that will not finish by themselves.

Called on every timer tick and by the status API. For each open run it asks the executor about
its job: a failed or canceled job fails the chunks still pending (so chunks already recorded
keep their predictions and the run ends ``partial``, or ``failed`` if none were recorded). A run
with no progress for ``RUN_TIMEOUT_MINUTES`` (``updated_at`` moves with every recorded chunk) is
treated the same way, with a "stalled" reason.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select

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
    last_progress = run.updated_at or run.created_at or now
    if now - last_progress > timeout:
        _give_up(
            ctx,
            run,
            f"stalled: no progress for {ctx.settings.run_timeout_minutes:g} "
            f"minutes ({run.n_chunks_recorded} of {run.n_chunks} chunks recorded)",
        )
    return records.get_run(ctx.engine, run.run_id)


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
