"""Writing a training job's chunks: the due sensors' per-bucket aggregates over the trailing
window, streamed from SQL, to ``training/<job_id>/<chunk_id>.parquet`` in the chunks container.

As a run's preparation does (``shared.runs.prepare``), nothing holds the whole window: the
aggregates are read from a server-side cursor in partitions of whole sensors
(``shared.features.stream_features``) and a chunk goes to blob as soon as it holds
``SENSORS_PER_CHUNK`` sensors or :data:`CHUNK_ROWS` buckets, so the timer's memory is one read
partition plus one chunk whatever the fleet and the window. Each sensor's rows carry the version
its new model will be registered under, and the chunk's metadata says how to train it (see
:mod:`scoring.train`). Sensors with fewer than ``MIN_TRAINING_BUCKETS`` buckets are not written:
they are returned, for the report, and keep their active version.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import insert

from scoring.train import (
    META_CHUNK_ID,
    META_ESTIMATOR,
    META_FEATURES,
    META_JOB_ID,
    META_KEY,
    META_SET_ID,
    META_TARGET_RATE,
    TRAINING_COLUMNS,
)
from shared.blobs import training_chunk_blob
from shared.context import AppContext
from shared.db.schema import training_chunks
from shared.executors.base import ChunkRef
from shared.features import sensor_bounds, stream_features
from shared.training.jobs import CHUNK_WRITTEN, Job

CHUNK_ROWS = 500_000
"""Buckets per training chunk at most (~40 MiB in Arrow; 14 days of one-minute buckets is
20,160 per sensor, so ~25 sensors a chunk; short windows fill ``SENSORS_PER_CHUNK`` first)."""


@dataclass
class PreparedTraining:
    chunks: list[ChunkRef] = field(default_factory=list)
    n_sensors: int = 0
    too_few: list[tuple[str, str, int]] = field(default_factory=list)


def set_id_for(job: Job, chunk_id: str) -> str:
    """The model set id of a chunk's models: deterministic, so a re-run of the step rewrites
    the same file."""
    return f"set-{job.window.end:%Y%m%dT%H%M}-{job.training_key[:8]}-a{job.attempt}-{chunk_id}"


def write_training_chunks(
    ctx: AppContext,
    job: Job,
    sensors: Sequence[tuple[str, str]],
    versions: dict[tuple[str, str], int],
    features: Sequence[str],
) -> PreparedTraining:
    """Stream the window's aggregates of ``sensors`` into the job's chunks (see module doc)."""
    settings = ctx.settings
    wanted = set(sensors)
    out = PreparedTraining()
    members: list[pa.Table] = []
    rows = 0
    chunk_rows: list[dict] = []

    def flush() -> None:
        nonlocal members, rows
        chunk_id = f"c{len(out.chunks):05d}"
        table = pa.concat_tables(members).select(list(TRAINING_COLUMNS))
        table = table.replace_schema_metadata(
            {
                META_CHUNK_ID: chunk_id,
                META_JOB_ID: job.job_id,
                META_KEY: job.training_key,
                META_ESTIMATOR: job.estimator,
                META_FEATURES: json.dumps(list(features)),
                META_TARGET_RATE: repr(float(settings.target_false_alarm_rate)),
                META_SET_ID: set_id_for(job, chunk_id),
            }
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        blob = training_chunk_blob(job.job_id, chunk_id)
        ctx.store.upload(settings.chunks_container, blob, buffer.getvalue())
        out.chunks.append(ChunkRef(chunk_id, blob, (), len(members)))
        chunk_rows.append(
            {
                "job_id": job.job_id,
                "chunk_id": chunk_id,
                "blob_path": blob,
                "n_sensors": len(members),
                "status": CHUNK_WRITTEN,
                "etag": None,
                "result": None,
                "error": None,
                "done_at": None,
            }
        )
        members, rows = [], 0

    with ctx.engine.connect() as conn:
        stream = stream_features(
            conn,
            job.window.start,
            job.window.end,
            settings.bucket_seconds,
            sensors=sorted(wanted) if wanted else None,
        )
        for table in stream:
            devices, names, bounds = sensor_bounds(table)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                key = (str(devices[a]), str(names[a]))
                if key not in wanted:
                    continue
                n = int(b - a)
                if n < settings.min_training_buckets:
                    out.too_few.append((*key, n))
                    continue
                piece = table.slice(int(a), n)
                piece = piece.append_column(
                    "model_version", pa.array(np.full(n, versions[key], dtype=np.int64))
                )
                members.append(piece)
                rows += n
                out.n_sensors += 1
                if len(members) >= settings.sensors_per_chunk or rows >= CHUNK_ROWS:
                    flush()
    if members:
        flush()
    if chunk_rows:
        with ctx.engine.begin() as conn:
            conn.execute(insert(training_chunks), chunk_rows)
    return out
