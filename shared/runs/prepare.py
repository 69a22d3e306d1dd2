"""Preparing a run: aggregate the window in SQL, group sensors into chunks, write them to blob.

Each sensor's rows are preceded by its buckets of the ``CONTEXT_BUCKETS`` before the window,
marked ``context``: models that compare a bucket with its recent past (the default detector) need
that history, and the scoring step stays files in, files out. Context rows are not scored into
predictions. Only sensors with an active model and a bucket in the window are chunked;
sensors with readings but no model are listed in the run's errors (kind ``no_model``), never
silently skipped. Chunks hold ``SENSORS_PER_CHUNK`` sensors each, sorted by device and sensor,
named ``c00000``, ``c00001``... so preparing the same run again rewrites the same blobs.
"""

from __future__ import annotations

import io
import time
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
from shared.features import aggregate_features
from shared.feedback.service import chunk_with_sensitivity
from shared.models.registry import active_models_for
from shared.runs.records import CHUNK_WRITTEN, Run

KIND_NO_MODEL = "no_model"


@dataclass
class Prepared:
    chunks: list[ChunkRef]
    n_sensors: int
    without_model: list[tuple[str, str]]
    seconds: dict[str, float]


def _sensor_bounds(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row bounds of each sensor in a table sorted by (device, sensor)."""
    devices = table.column("device").to_numpy(zero_copy_only=False)
    sensors = table.column("sensor").to_numpy(zero_copy_only=False)
    if len(devices) == 0:
        return devices, sensors, np.array([0])
    change = np.flatnonzero((devices[1:] != devices[:-1]) | (sensors[1:] != sensors[:-1])) + 1
    return devices, sensors, np.concatenate([[0], change, [len(devices)]])


def prepare_run(ctx: AppContext, run: Run) -> Prepared:
    settings = ctx.settings
    timings: dict[str, float] = {}
    started = time.perf_counter()
    context_start = run.window.start - timedelta(seconds=CONTEXT_BUCKETS * settings.bucket_seconds)
    with ctx.engine.connect() as conn:
        table = aggregate_features(
            conn,
            context_start,
            run.window.end,
            settings.bucket_seconds,
            run.filters.devices or None,
            run.filters.sensors or None,
        )
        active = active_models_for(conn, run.filters.devices or None, run.filters.sensors or None)
    timings["aggregate"] = time.perf_counter() - started

    started = time.perf_counter()
    devices, sensors, bounds = _sensor_bounds(table)
    starts, ends = bounds[:-1], bounds[1:]
    window_start_us = int(
        (run.window.start.replace(tzinfo=None) - datetime(1970, 1, 1)).total_seconds() * 1_000_000
    )
    context = table.column("bucket_start").cast(pa.int64()).to_numpy() < window_start_us
    table = table.append_column(CONTEXT_COLUMN, pa.array(context))
    keep = np.zeros(table.num_rows, dtype=bool)
    with_model: list[tuple[int, int, object]] = []
    without_model: list[tuple[str, str]] = []
    for a, b in zip(starts, ends, strict=True):
        key = (str(devices[a]), str(sensors[a]))
        if context[a:b].all():
            continue  # history only: nothing of this sensor in the window
        model = active.get(key)
        if model is None:
            without_model.append(key)
        else:
            keep[a:b] = True
            with_model.append((int(a), int(b), model))

    chunk_refs: list[ChunkRef] = []
    chunk_rows = []
    per_chunk = settings.sensors_per_chunk
    for index, first in enumerate(range(0, len(with_model), per_chunk)):
        members = with_model[first : first + per_chunk]
        pieces = [table.slice(a, b - a) for a, b, _ in members]
        part = pa.concat_tables(pieces)
        lengths = [b - a for a, b, _ in members]
        files = [m.model_file for _, _, m in members]
        part = part.append_column(
            "model_file", pa.array(np.repeat(np.array(files, dtype=object), lengths), pa.string())
        ).append_column(
            "model_version",
            pa.array(
                np.repeat(np.array([m.version for _, _, m in members], dtype=np.int64), lengths)
            ),
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
    timings["write_chunks"] = time.perf_counter() - started

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
    return Prepared(chunk_refs, len(with_model), without_model, timings)
