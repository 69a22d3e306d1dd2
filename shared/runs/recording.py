"""Recording predictions: the blob trigger's service.

For each ``runs/<run_id>/<chunk_id>.predictions.parquet`` blob: parse it, replace the chunk's
rows in ``predictions`` and its per-sensor errors in ``run_errors`` (delete + insert in one
transaction: an upsert at chunk granularity), mark the chunk recorded, recount the run,
which finishes it when every chunk is in, and bring the anomaly events of the chunk's sensors
up to date (``shared.events``), all in that transaction. Delivered twice, the second delivery
finds the chunk recorded with the same ETag and changes nothing; even without an ETag it
rewrites the same rows and recomputes the same events.

A file that cannot be parsed, or does not belong to a known chunk, is recorded as a failed chunk
(or a run error) with its reason and the function returns normally: raising would only make
the host retry the same bad file five times and then park it in a poison queue. The one case
that raises is a predictions file whose errors file has not arrived yet (Azure ML's mounted
outputs may upload the two out of order): then a retry is exactly what is wanted.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import and_, delete, insert, select, update

from scoring.features import ERROR_COLUMNS, PREDICTION_COLUMNS
from shared.alerts import deliver_quietly, enqueue_for_chunk
from shared.blobs import errors_blob, parse_predictions_blob
from shared.clock import utcnow
from shared.context import AppContext
from shared.db.bulk import bulk_insert
from shared.db.schema import predictions, run_chunks, run_errors
from shared.events.tracking import update_events_for_chunk
from shared.runs import records

log = logging.getLogger(__name__)

KIND_SENSOR = "sensor_error"
KIND_CHUNK = "chunk_error"
KIND_FOREIGN = "foreign_file"
META_ERRORS = b"scoring.errors"
META_CHUNK_ERROR = b"scoring.chunk_error"  # set by scoring.score for an unreadable chunk


class ErrorsFileMissing(RuntimeError):
    """The predictions file says sensors failed but its errors file is not there (yet)."""


@dataclass
class RecordResult:
    outcome: str  # recorded | duplicate | failed_chunk | foreign
    run_id: str | None = None
    chunk_id: str | None = None
    rows: int = 0
    anomalies: int = 0
    errors: int = 0
    reason: str | None = None
    run_status: str | None = None


def record_predictions_blob(
    ctx: AppContext, name: str, data: bytes, etag: str | None = None
) -> RecordResult:
    """Record one predictions blob (``name`` with or without the container prefix)."""
    settings = ctx.settings
    parsed = parse_predictions_blob(name)
    if parsed is None:
        log.warning("ignoring a blob that is not a predictions file", extra={"blob": name})
        return RecordResult(
            "foreign", reason=f"{name} is not runs/<run>/<chunk>.predictions.parquet"
        )
    run_id, chunk_id = parsed.run_id, parsed.chunk_id
    context = {"run_id": run_id, "chunk_id": chunk_id}
    with ctx.engine.connect() as conn:
        chunk = conn.execute(
            select(run_chunks).where(
                run_chunks.c.run_id == run_id, run_chunks.c.chunk_id == chunk_id
            )
        ).one_or_none()
    if chunk is None:
        reason = f"predictions file {name} matches no chunk of a known run"
        log.warning(reason, extra=context)
        if records.get_run(ctx.engine, run_id) is not None:
            with ctx.engine.begin() as conn:
                _replace_errors(conn, run_id, chunk_id, [(None, None, KIND_FOREIGN, reason)])
        return RecordResult("foreign", run_id, chunk_id, reason=reason)
    if chunk.status == records.CHUNK_RECORDED and etag is not None and chunk.etag == etag:
        log.info("predictions already recorded", extra=context)
        return RecordResult("duplicate", run_id, chunk_id, rows=chunk.n_predictions)

    try:
        table = pq.read_table(io.BytesIO(data))
        metadata = table.schema.metadata or {}
        chunk_error = metadata.get(META_CHUNK_ERROR)
        if chunk_error:
            raise ValueError(f"the scoring step could not score the chunk: {chunk_error.decode()}")
        missing = [c for c in PREDICTION_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"predictions file lacks column(s) {', '.join(missing)}")
        n_errors = int(metadata.get(META_ERRORS, b"0") or 0)
    except Exception as exc:  # noqa: BLE001 - a bad file fails its chunk with the reason
        reason = f"unreadable predictions file: {exc}"
        log.warning(reason, extra=context)
        fail_chunks(ctx, run_id, [chunk_id], reason)
        run = records.get_run(ctx.engine, run_id)
        return RecordResult(
            "failed_chunk", run_id, chunk_id, reason=reason, run_status=run.status if run else None
        )

    sensor_errors: list[tuple[str | None, str | None, str, str]] = []
    if n_errors:
        name_in_container = errors_blob(run_id, chunk_id)
        if not ctx.store.exists(settings.predictions_container, name_in_container):
            raise ErrorsFileMissing(
                f"{name_in_container} not found although {n_errors} sensor(s) failed; retrying"
            )
        errors = pq.read_table(
            io.BytesIO(ctx.store.download(settings.predictions_container, name_in_container))
        )
        cols = [errors.column(c).to_pylist() for c in ERROR_COLUMNS]
        sensor_errors = [(d, s, KIND_SENSOR, r) for d, s, r in zip(*cols, strict=True)]

    rows = _prediction_rows(table, run_id, chunk_id)
    anomalies = int(np.count_nonzero(table.column("is_anomaly").to_numpy(zero_copy_only=False)))
    with ctx.engine.begin() as conn:
        conn.execute(
            delete(predictions).where(
                predictions.c.run_id == run_id, predictions.c.chunk_id == chunk_id
            )
        )
        bulk_insert(conn, predictions, PREDICTION_ROW, rows)
        _replace_errors(conn, run_id, chunk_id, sensor_errors)
        conn.execute(
            update(run_chunks)
            .where(run_chunks.c.run_id == run_id, run_chunks.c.chunk_id == chunk_id)
            .values(
                status=records.CHUNK_RECORDED,
                predictions_blob=name,
                etag=etag,
                n_predictions=len(rows),
                n_anomalies=anomalies,
                n_errors=len(sensor_errors),
                error=None,
                recorded_at=utcnow(),
            )
        )
        run = records.refresh_counts(conn, run_id)
        events_mark = utcnow()  # alerts: the events changed from here on
        # In the same transaction: the chunk's sensors' events always match its predictions.
        events = update_events_for_chunk(
            conn,
            run_id,
            chunk_id,
            settings.event_gap_buckets,
            settings.bucket_seconds,
            rest_buckets=settings.event_rest_buckets,
        )
        # ---- alerts (shared.alerts): the outbox rows of these event changes, same transaction
        enqueue_for_chunk(conn, settings, run_id, chunk_id, since=events_mark)
    # ---- alerts: sent once committed; a failing receiver never fails the recording
    deliver_quietly(ctx.engine, settings)
    log.info(
        "recorded predictions",
        extra={
            **context,
            "rows": len(rows),
            "anomalies": anomalies,
            "sensor_errors": len(sensor_errors),
            "events_opened": events.opened,
            "events_updated": events.updated,
            "events_deleted": events.deleted,
            "run_status": run.status,
        },
    )
    return RecordResult(
        "recorded",
        run_id,
        chunk_id,
        len(rows),
        anomalies,
        len(sensor_errors),
        run_status=run.status,
    )


PREDICTION_ROW = (
    "run_id",
    "chunk_id",
    "device",
    "sensor",
    "bucket_start",
    "count",
    "mean",
    "min",
    "max",
    "std",
    "score",
    "is_anomaly",
    "model_version",
)


def _prediction_rows(table: pa.Table, run_id: str, chunk_id: str) -> list[tuple]:
    """Rows for the predictions table in ``PREDICTION_ROW`` order (naive-UTC bucket starts)."""
    bucket = table.column("bucket_start")
    if pa.types.is_timestamp(bucket.type) and bucket.type.tz is not None:
        bucket = bucket.cast(pa.timestamp("us"))
    columns = [
        bucket.to_pylist() if name == "bucket_start" else table.column(name).to_pylist()
        for name in PREDICTION_ROW[2:]
    ]
    return [(run_id, chunk_id, *values) for values in zip(*columns, strict=True)]


def _replace_errors(conn, run_id: str, chunk_id: str, errors: Sequence[tuple]) -> None:
    conn.execute(
        delete(run_errors).where(
            and_(
                run_errors.c.run_id == run_id,
                run_errors.c.chunk_id == chunk_id,
                run_errors.c.kind.in_([KIND_SENSOR, KIND_CHUNK, KIND_FOREIGN]),
            )
        )
    )
    if errors:
        conn.execute(
            insert(run_errors),
            [
                {
                    "run_id": run_id,
                    "chunk_id": chunk_id,
                    "device": d,
                    "sensor": s,
                    "kind": k,
                    "reason": str(r)[:4000],
                }
                for d, s, k, r in errors
            ],
        )


def fail_chunks(ctx: AppContext, run_id: str, chunk_ids: Sequence[str], reason: str) -> None:
    """Mark chunks failed (with a run error each) and recount the run."""
    with ctx.engine.begin() as conn:
        for chunk_id in chunk_ids:
            conn.execute(
                update(run_chunks)
                .where(
                    run_chunks.c.run_id == run_id,
                    run_chunks.c.chunk_id == chunk_id,
                    run_chunks.c.status != records.CHUNK_RECORDED,
                )
                .values(status=records.CHUNK_FAILED, error=reason[:4000], recorded_at=utcnow())
            )
            conn.execute(
                delete(predictions).where(
                    predictions.c.run_id == run_id, predictions.c.chunk_id == chunk_id
                )
            )
            _replace_errors(conn, run_id, chunk_id, [(None, None, KIND_CHUNK, reason)])
        records.refresh_counts(conn, run_id)


def json_summary(result: RecordResult) -> str:
    return json.dumps(result.__dict__)
