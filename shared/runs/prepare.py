"""Preparing a run: aggregate the window in SQL, group sensors into chunks, write them to blob.

Each sensor's rows are preceded by its buckets of the ``CONTEXT_BUCKETS`` before the window,
marked ``context``: models that compare a bucket with its recent past (the default detector) need
that history, and the scoring step stays files in, files out. Context rows are not scored into
predictions. Only sensors with an active model and a bucket in the window are chunked;
sensors with readings but no model are listed in the run's errors (kind ``no_model``), never
silently skipped. Chunks hold ``SENSORS_PER_CHUNK`` sensors each, sorted by device and sensor,
named ``c00000``, ``c00001``... so preparing the same run again rewrites the same blobs.

Nothing holds the whole window: the aggregation is streamed from SQL a partition of whole sensors
at a time and each chunk goes to blob as soon as it is full (see ``prepare_run``).
"""

from __future__ import annotations

import io
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import delete, insert

from scoring.features import CHUNK_COLUMNS, CONTEXT_BUCKETS, CONTEXT_COLUMN, SENSITIVITY_METADATA
from shared.blobs import chunk_blob
from shared.context import AppContext
from shared.db.schema import run_chunks, run_errors
from shared.executors.base import ChunkRef
from shared.features import sensor_bounds, stream_features
from shared.feedback.service import chunk_with_sensitivity
from shared.models.registry import ActiveModel, active_models_for
from shared.runs.records import CHUNK_WRITTEN, Run

KIND_NO_MODEL = "no_model"


@dataclass
class Prepared:
    chunks: list[ChunkRef]
    n_sensors: int
    without_model: list[tuple[str, str]]
    seconds: dict[str, float]


def prepare_run(ctx: AppContext, run: Run) -> Prepared:
    """Stream the window from SQL into chunks: memory holds two chunks (one being written, on a
    background thread) and one read partition.

    The aggregation is read from a server-side cursor in partitions of whole sensors
    (``stream_features``); each partition's active models are looked up for its sensors alone
    (on a second connection: SQL Server without MARS runs one statement per connection); a chunk
    is written to blob as soon as it has ``SENSORS_PER_CHUNK`` sensors. So a run's peak memory
    depends on ``SENSORS_PER_CHUNK`` x buckets, not on the number of sensors or chunks.
    """
    settings = ctx.settings
    timings = {"aggregate": 0.0, "write_chunks": 0.0}
    context_start = run.window.start - timedelta(seconds=CONTEXT_BUCKETS * settings.bucket_seconds)
    window_start_us = int(
        (run.window.start.replace(tzinfo=None) - datetime(1970, 1, 1)).total_seconds() * 1_000_000
    )
    per_chunk = settings.sensors_per_chunk
    chunk_refs: list[ChunkRef] = []
    chunk_rows: list[dict] = []
    without_model: list[tuple[str, str]] = []
    members: list[tuple[pa.Table, ActiveModel]] = []
    n_sensors = 0
    with (
        ctx.engine.connect() as conn,
        ctx.engine.connect() as lookup,
        _ChunkWriter(ctx, run, chunk_refs, chunk_rows) as writer,
    ):
        stream = stream_features(
            conn,
            context_start,
            run.window.end,
            settings.bucket_seconds,
            run.filters.devices or None,
            run.filters.sensors or None,
        )
        while True:
            started = time.perf_counter()
            table = next(stream, None)
            timings["aggregate"] += time.perf_counter() - started
            if table is None:
                break
            started = time.perf_counter()
            devices, sensors, bounds = sensor_bounds(table)
            context = table.column("bucket_start").cast(pa.int64()).to_numpy() < window_start_us
            table = table.append_column(CONTEXT_COLUMN, pa.array(context))
            scored = [
                (int(a), int(b), (str(devices[a]), str(sensors[a])))
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)
                if not context[a:b].all()  # history only: nothing of this sensor in the window
            ]
            active = (
                active_models_for(lookup, sensors=[key for _, _, key in scored]) if scored else {}
            )
            for a, b, key in scored:
                model = active.get(key)
                if model is None:
                    without_model.append(key)
                    continue
                members.append((table.slice(a, b - a), model))
                n_sensors += 1
                if len(members) == per_chunk:
                    writer.write(members)
                    members = []
            timings["write_chunks"] += time.perf_counter() - started
        started = time.perf_counter()
        if members:
            writer.write(members)
            members = []
        writer.wait()
        timings["write_chunks"] += time.perf_counter() - started

    with ctx.engine.begin() as conn:
        # Idempotent: preparing the same run again replaces its chunk rows and no-model list.
        conn.execute(delete(run_chunks).where(run_chunks.c.run_id == run.run_id))
        conn.execute(
            delete(run_errors).where(
                run_errors.c.run_id == run.run_id, run_errors.c.kind == KIND_NO_MODEL
            )
        )
        if chunk_rows:
            conn.execute(insert(run_chunks), chunk_rows)
        if without_model:
            conn.execute(
                insert(run_errors),
                [
                    {
                        "run_id": run.run_id,
                        "chunk_id": None,
                        "device": d,
                        "sensor": s,
                        "kind": KIND_NO_MODEL,
                        "reason": "readings in the window but no active model",
                    }
                    for d, s in without_model
                ],
            )
    return Prepared(chunk_refs, n_sensors, without_model, timings)


class _ChunkWriter:
    """Writes chunks on one background thread while the next is read and grouped.

    Parquet encoding, compression and the upload release the GIL, so writing one chunk
    overlaps reading the next from SQL. At most one chunk is in flight: ``write`` waits for
    the previous one first, so memory holds two chunks at most, whatever the fleet; chunks are
    written in order, and an error of the writer comes out of the next ``write`` or ``wait``.
    """

    def __init__(self, ctx: AppContext, run: Run, refs: list[ChunkRef], rows: list[dict]):
        self.ctx, self.run, self.refs, self.rows = ctx, run, refs, rows
        self.n_chunks = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-writer")
        self._pending: Future | None = None

    def write(self, members: list[tuple[pa.Table, ActiveModel]]) -> None:
        self.wait()
        self._pending = self._pool.submit(
            _write_chunk, self.ctx, self.run, self.n_chunks, members, self.refs, self.rows
        )
        self.n_chunks += 1

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> _ChunkWriter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _write_chunk(
    ctx: AppContext,
    run: Run,
    index: int,
    members: list[tuple[pa.Table, ActiveModel]],
    chunk_refs: list[ChunkRef],
    chunk_rows: list[dict],
) -> None:
    """Write chunk ``index`` (its sensors' rows, context first, then model columns) to blob."""
    settings = ctx.settings
    part = pa.concat_tables([piece for piece, _ in members])
    lengths = [piece.num_rows for piece, _ in members]
    files = [m.model_file for _, m in members]
    part = part.append_column(
        "model_file", pa.array(np.repeat(np.array(files, dtype=object), lengths), pa.string())
    ).append_column(
        "model_version",
        pa.array(np.repeat(np.array([m.version for _, m in members], dtype=np.int64), lengths)),
    )
    part = part.select([*CHUNK_COLUMNS, CONTEXT_COLUMN]).replace_schema_metadata(
        {SENSITIVITY_METADATA: repr(float(settings.sensitivity))}
    )
    # Per-sensor sensitivities raised by false-alarm feedback (shared.feedback), per row.
    part = chunk_with_sensitivity(ctx.engine, part, settings.sensitivity)
    buffer = io.BytesIO()
    pq.write_table(part, buffer, compression="zstd")
    chunk_id = f"c{index:05d}"
    blob = chunk_blob(run.run_id, chunk_id)
    ctx.store.upload(settings.chunks_container, blob, buffer.getvalue())
    chunk_refs.append(ChunkRef(chunk_id, blob, tuple(sorted(set(files))), len(members)))
    chunk_rows.append(
        {
            "run_id": run.run_id,
            "chunk_id": chunk_id,
            "blob_path": blob,
            "n_sensors": len(members),
            "n_rows": part.num_rows,
            "status": CHUNK_WRITTEN,
            "predictions_blob": None,
            "etag": None,
            "n_predictions": 0,
            "n_anomalies": 0,
            "n_errors": 0,
            "error": None,
            "recorded_at": None,
        }
    )
