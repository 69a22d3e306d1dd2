"""Synthetic data for the scoring tests: reference-like sensors, chunks in the contract's schema."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from scoring.features import DEFAULT_FEATURES

REPO = Path(__file__).resolve().parents[2]

# The reference data set: each sensor's readings uniform in its own range, every 5 s.
REFERENCE_RANGES = {1: (10, 15), 2: (30, 40), 3: (60, 65), 4: (80, 85), 5: (100, 110)}
READINGS_PER_BUCKET = 12  # 5-second readings in a 1-minute bucket

CHUNK_SCHEMA = pa.schema(
    [
        ("device", pa.string()),
        ("sensor", pa.string()),
        ("bucket_start", pa.timestamp("us", tz="UTC")),
        ("count", pa.int64()),
        ("mean", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("std", pa.float64()),
        ("model_file", pa.string()),
        ("model_version", pa.int64()),
    ]
)


def readings_to_features(readings: np.ndarray) -> np.ndarray:
    """(n_buckets, n_readings) raw readings -> (n_buckets, 4) in DEFAULT_FEATURES order."""
    columns = {
        "mean": readings.mean(axis=1),
        "std": readings.std(axis=1),
        "min": readings.min(axis=1),
        "max": readings.max(axis=1),
    }
    return np.column_stack([columns[name] for name in DEFAULT_FEATURES])


def uniform_buckets(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    """Features of `n` normal buckets of uniform readings in [lo, hi)."""
    return readings_to_features(rng.uniform(lo, hi, size=(n, READINGS_PER_BUCKET)))


def chunk_frame(
    device: str,
    sensor: str,
    X: np.ndarray,
    model_file: str,
    model_version: int = 1,
    *,
    start: str = "2024-01-01T00:00:00Z",
    count: int = READINGS_PER_BUCKET,
) -> pd.DataFrame:
    """Chunk rows of one sensor from features in DEFAULT_FEATURES order."""
    n = len(X)
    frame = pd.DataFrame(
        {
            "device": device,
            "sensor": sensor,
            "bucket_start": pd.date_range(start, periods=n, freq="min"),
            "count": np.full(n, count, dtype=np.int64),
            "model_file": model_file,
            "model_version": np.full(n, model_version, dtype=np.int64),
        }
    )
    for column, name in enumerate(DEFAULT_FEATURES):
        frame[name] = X[:, column]
    return frame


def write_chunk(path: Path, frames: Sequence[pd.DataFrame]) -> Path:
    """Write rows as a chunk file with exactly the contract's column types."""
    frame = pd.concat(frames, ignore_index=True)
    table = pa.Table.from_pandas(
        frame[CHUNK_SCHEMA.names], schema=CHUNK_SCHEMA, preserve_index=False
    )
    pq.write_table(table, path)
    return path


def subprocess_env() -> dict[str, str]:
    """Environment for running the scoring step as a subprocess from the repo root."""
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env
