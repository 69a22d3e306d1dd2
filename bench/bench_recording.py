"""Recording benchmark: one chunk's predictions file recorded by the blob trigger's service.

Setup (not timed, in this process): a run of ``--hours`` hours with one chunk of ``--sensors``
sensors of 60 s buckets. The run is created by ``records.create_run``, its chunk file and chunk
row by the run preparation's own ``_write_chunk``; the predictions file is the one the scoring
step would write for it (same columns, types, metadata and Parquet options, see
``scoring.score``): ``--flagged`` of the buckets flagged in bursts of 1-10 (so the events step
has work), each sensor with a flag carrying the expected band on every bucket and an
explanation (~700 characters of JSON) on each flagged one. Files go to Azurite; SQL is SQLite
or PostgreSQL (started as the tests start it, ``shared.local.postgres``).

Timed, in a fresh child process so that setup's memory is not counted: the blob's bytes are
downloaded (as the Functions host hands them over), then ``record_predictions_blob`` checks the
file against its chunk, replaces the chunk's predictions, recounts the run and brings its
events and alert outbox up to date. Peak RSS is the child's VmHWM (reset via
/proc/self/clear_refs after the download; Linux), growth is that peak minus the RSS before.

    .venv/bin/python bench/bench_recording.py --engine sqlite|postgresql [--sensors 1000
        --hours 24 --flagged 0.005]

The last line printed is JSON: engine, rows, anomalies, events, seconds, peak_rss_mib,
growth_mib, file_mib.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_events import EXPLANATION, flags_for  # noqa: E402
from sqlalchemy import func, insert, select  # noqa: E402

from scoring.features import CONTEXT_COLUMN, EXPLANATION_COLUMNS, PREDICTION_COLUMNS  # noqa: E402
from scoring.score import _PREDICTION_DICTIONARY, METADATA_CHUNK_ID, METADATA_ERRORS  # noqa: E402
from shared.blobs import predictions_blob  # noqa: E402
from shared.context import AppContext, set_context  # noqa: E402
from shared.db import migrate  # noqa: E402
from shared.db.schema import anomaly_events, predictions, run_chunks  # noqa: E402
from shared.local.azurite import start_azurite  # noqa: E402
from shared.models.registry import ActiveModel  # noqa: E402
from shared.runs import records  # noqa: E402
from shared.runs.prepare import _write_chunk  # noqa: E402
from shared.runs.windows import Window  # noqa: E402
from shared.settings import Settings  # noqa: E402

START = datetime(2026, 3, 1)
MIB = 1024 * 1024


def prepare_chunk(
    ctx: AppContext,
    sensors: int,
    hours: int,
    flagged: float = 0.005,
    start: datetime = START,
    seed: int = 7,
) -> str:
    """A run of ``hours`` from ``start`` with one chunk of ``sensors`` sensors, its chunk file,
    and its predictions file uploaded; returns the predictions blob's name."""
    settings = ctx.settings
    window = Window(start, start + timedelta(hours=hours))
    run, _ = records.create_run(ctx.engine, window, "cli", "local", records.RunFilters())
    n_buckets = hours * 3600 // settings.bucket_seconds
    ids = [(f"device-{i // 10:05d}", f"sensor-{i % 10:02d}") for i in range(sensors)]
    rng = np.random.default_rng(seed)
    n = sensors * n_buckets
    epoch_us = int((start - datetime(1970, 1, 1)).total_seconds()) * 1_000_000
    buckets = epoch_us + np.arange(n_buckets, dtype=np.int64) * settings.bucket_seconds * 1_000_000
    mean = rng.normal(20.0, 2.0, n)
    spread = rng.uniform(0.1, 1.0, n)
    chunk = pa.table(
        {
            "device": pa.array(np.repeat(np.array([d for d, _ in ids], dtype=object), n_buckets)),
            "sensor": pa.array(np.repeat(np.array([s for _, s in ids], dtype=object), n_buckets)),
            "bucket_start": pa.array(np.tile(buckets, sensors), pa.timestamp("us", tz="UTC")),
            "count": pa.array(np.full(n, 12, dtype=np.int64)),  # 5 s readings
            "mean": mean,
            "min": mean - 2 * spread,
            "max": mean + 2 * spread,
            "std": spread,
            CONTEXT_COLUMN: pa.array(np.zeros(n, dtype=bool)),
        }
    )
    members = [
        (chunk.slice(i * n_buckets, n_buckets), ActiveModel(d, s, 1, "bench.npz", "baseline"))
        for i, (d, s) in enumerate(ids)
    ]
    refs, rows = [], []
    _write_chunk(ctx, run, 0, members, refs, rows)
    with ctx.engine.begin() as conn:
        conn.execute(insert(run_chunks), rows)
        records.update_run(conn, run.run_id, n_sensors=sensors, n_chunks=1, status=records.SCORING)

    flags = flags_for(rng, sensors, n_buckets, flagged)
    scores = np.where(flags, rng.uniform(0.5, 1.0, flags.shape), rng.uniform(0.0, 0.5, flags.shape))
    explained = np.repeat(flags.any(axis=1), n_buckets)  # sensors with a flag have a band
    flat = flags.ravel()
    band = pa.array(np.where(explained, mean, np.nan), from_pandas=True)
    table = pa.table(
        {
            **{name: chunk.column(name) for name in PREDICTION_COLUMNS[:8]},
            "score": scores.ravel(),
            "is_anomaly": pa.array(flat),
            "model_version": pa.array(np.ones(n, dtype=np.int64)),
            "expected_low": pa.compute.subtract(band, 3.0),
            "expected_high": pa.compute.add(band, 3.0),
            "explanation": pa.array(np.where(flat, EXPLANATION, None).astype(object), pa.string()),
        }
    ).select(list(PREDICTION_COLUMNS + EXPLANATION_COLUMNS))
    table = table.replace_schema_metadata({METADATA_CHUNK_ID: "c00000", METADATA_ERRORS: "0"})
    sink = io.BytesIO()
    pq.write_table(  # as scoring.score writes it
        table,
        sink,
        compression="snappy",
        use_dictionary=_PREDICTION_DICTIONARY,
        write_statistics=["device", "sensor", "bucket_start", "is_anomaly"],
    )
    name = predictions_blob(run.run_id, "c00000")
    ctx.store.upload(settings.predictions_container, name, sink.getvalue())
    return name


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def timed_record(env: dict, name: str) -> dict:
    """In this (fresh) process: download the blob, record it; seconds and RSS."""
    from shared.runs.recording import record_predictions_blob

    ctx = AppContext.create(Settings.from_env(env))
    set_context(ctx)
    container = ctx.settings.predictions_container
    data = ctx.store.download(container, name)
    etag = ctx.store.etag(container, name)
    with ctx.engine.connect():  # the engine's first connection, as a warm host has it
        pass
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:  # resets VmHWM to the current RSS
        fh.write("5")
    started = time.perf_counter()
    result = record_predictions_blob(ctx, name, data, etag)
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    assert result.outcome == "recorded", result
    with ctx.engine.connect() as conn:
        stored = conn.execute(
            select(func.count())
            .select_from(predictions)
            .where(predictions.c.run_id == result.run_id)
        ).scalar_one()
        events = conn.execute(select(func.count()).select_from(anomaly_events)).scalar_one()
    assert stored == result.rows, (stored, result.rows)
    ctx.engine.dispose()
    return {
        "rows": result.rows,
        "anomalies": result.anomalies,
        "events": events,
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(peak / 1024, 1),
        "growth_mib": round((peak - before) / 1024, 1),
        "file_mib": round(len(data) / MIB, 1),
        "arrow_pool": pa.default_memory_pool().backend_name,  # see shared/__init__.py
        "pid": os.getpid(),
    }


def record_in_child(env: dict, name: str) -> dict:
    """``timed_record`` in a fresh Python process (setup's memory not counted)."""
    out = subprocess.run(
        [sys.executable, __file__, "--timed-record", json.dumps({"env": env, "name": name})],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(f"recording child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--flagged", type=float, default=0.005, help="share flagged (0.005)")
    parser.add_argument("--timed-record", help=argparse.SUPPRESS)  # the child's config (JSON)
    args = parser.parse_args()
    if args.timed_record:
        config = json.loads(args.timed_record)
        print(json.dumps(timed_record(config["env"], config["name"])))
        return 0
    logging.getLogger().setLevel(logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="bench-recording-"))
    azurite = start_azurite(tmp / "azurite", services=("blob",))
    postgres = None
    try:
        if args.engine == "postgresql":
            from shared.local.postgres import start_postgres

            postgres = start_postgres()
            sql_url = postgres.create_database("bench")
        else:
            sql_url = f"sqlite:///{tmp / 'bench.db'}"
        env = {
            "DATA_DIR": str(tmp),
            "SQL_URL": sql_url,
            "ScoringStorage": azurite.connection_string,
        }
        ctx = AppContext.create(Settings.from_env(env))
        migrate.upgrade(ctx.engine)
        started = time.perf_counter()
        name = prepare_chunk(ctx, args.sensors, args.hours, args.flagged)
        setup = time.perf_counter() - started
        ctx.engine.dispose()
        result = record_in_child(env, name)
    finally:
        azurite.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # Azurite's data and the SQLite file: GBs
    result = {
        "engine": args.engine,
        "sensors": args.sensors,
        "hours": args.hours,
        **result,
        "setup_seconds": round(setup, 1),
    }
    print(
        f"one chunk of {args.sensors:,} sensors x {args.hours} h of 60 s buckets "
        f"({args.flagged:.1%} flagged in bursts), {result['file_mib']} MiB file"
    )
    print(f"{'engine':<12}{'rows':>11}{'flagged':>9}{'events':>8}{'seconds':>9}{'peak MiB':>10}")
    print(
        f"{args.engine:<12}{result['rows']:>11,}{result['anomalies']:>9,}{result['events']:>8,}"
        f"{result['seconds']:>9.2f}{result['peak_rss_mib']:>10.1f}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
