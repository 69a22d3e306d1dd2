"""Benchmark of the training step: ``python -m scoring.train`` over one training chunk.

Usage::

    python bench/bench_training.py [--sensors 50] [--days 14] [--estimator baseline]

Writes one training chunk of ``--sensors`` sensors x ``--days`` days of 1-minute buckets (the
aggregates of 12 uniform readings per bucket over each sensor's own range, with a daily cycle),
as ``shared.training.prepare`` writes them, then runs the step as the executors do, as a
subprocess, and prints the sensors fitted per second of the step's own timing, the wall time
and the peak RSS of the process (``getrusage`` of the child). One chunk is one step's unit of
work: the local pool and Azure ML run one such process per shard of chunks.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scoring.estimators import estimator_features  # noqa: E402
from scoring.train import (  # noqa: E402
    META_CHUNK_ID,
    META_ESTIMATOR,
    META_FEATURES,
    META_JOB_ID,
    META_KEY,
    META_SET_ID,
    META_TARGET_RATE,
    TRAINING_COLUMNS,
)


def make_chunk(path: Path, sensors: int, days: float, estimator: str, seed: int = 7) -> int:
    rng = np.random.default_rng(seed)
    buckets = int(days * 1440)
    start = np.datetime64("2026-03-01T00:00", "us").astype(np.int64)
    minute = 60 * 1_000_000
    starts = start + np.arange(buckets, dtype=np.int64) * minute
    parts = []
    for i in range(sensors):
        low = rng.uniform(0, 100)
        width = rng.uniform(5, 20)
        cycle = 0.2 * width * np.sin(2 * np.pi * np.arange(buckets) / 1440)
        readings = low + cycle[:, None] + rng.uniform(0, width, (buckets, 12))
        parts.append(
            pa.table(
                {
                    "device": pa.array([f"device-{i // 10:04d}"] * buckets),
                    "sensor": pa.array([f"sensor-{i % 10:02d}"] * buckets),
                    "bucket_start": pa.array(starts, pa.timestamp("us", tz="UTC")),
                    "count": pa.array(np.full(buckets, 12, dtype=np.int64)),
                    "mean": readings.mean(axis=1),
                    "min": readings.min(axis=1),
                    "max": readings.max(axis=1),
                    "std": readings.std(axis=1),
                    "model_version": pa.array(np.ones(buckets, dtype=np.int64)),
                }
            )
        )
    table = pa.concat_tables(parts).select(list(TRAINING_COLUMNS))
    table = table.replace_schema_metadata(
        {
            META_CHUNK_ID: "c00000",
            META_JOB_ID: "bench",
            META_KEY: "bench",
            META_ESTIMATOR: estimator,
            META_FEATURES: json.dumps(list(estimator_features(estimator))),
            META_TARGET_RATE: "0.001",
            META_SET_ID: "set-bench-c00000",
        }
    )
    pq.write_table(table, path, compression="zstd")
    return table.num_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=50)
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument("--estimator", default="baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        root = Path(tmp)
        (root / "chunks").mkdir()
        rows = make_chunk(
            root / "chunks" / "c00000.parquet", args.sensors, args.days, args.estimator
        )
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "scoring.train",
                "--chunks",
                str(root / "chunks"),
                "--output",
                str(root / "out"),
                "--models-output",
                str(root / "sets"),
            ],  # fmt: skip
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - started
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        result = {
            "sensors": args.sensors,
            "buckets_per_sensor": rows // args.sensors,
            "estimator": args.estimator,
            "fitted": summary["sensors_fitted"],
            "failed": summary["sensors_failed"],
            "step_seconds": round(summary["seconds"], 2),
            "wall_seconds": round(wall, 2),
            "sensors_per_second": round(summary["sensors_fitted"] / summary["seconds"], 2),
            "peak_rss_mib": round(peak_mib),
        }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
