"""Canonical feature definition shared by training, chunk writing and scoring.

Readings of one device/sensor are aggregated per time bucket (default one minute) into the
aggregates below. The SQL aggregation in the app computes exactly these; `aggregate_readings`
is the same definition in pandas, for training from an imported CSV and for tests.

Why these defaults: a model sees one row per bucket, so every anomaly must leave a trace in the
bucket's aggregates. ``mean`` catches level shifts, ``min``/``max`` catch a single spike that
the mean would average away, and ``std`` catches stuck sensors (identical readings give a
population std of exactly 0) as well as noise bursts. ``count`` is left out of the default model
because it measures the transport (missed or duplicated messages), not the sensor; models that
want it can list it in their features.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas is only needed for training; scoring runs on pyarrow + numpy.
    import pandas as pd

AGGREGATES: tuple[str, ...] = ("count", "mean", "min", "max", "std")
"""Every per-bucket aggregate a chunk carries, in column order."""

DEFAULT_FEATURES: tuple[str, ...] = ("mean", "std", "min", "max")
"""Features of the reference one-class SVM, in the order of its feature matrix columns (the
default detector, :mod:`scoring.baseline`, declares its own)."""

DERIVED_FEATURES: tuple[str, ...] = ("day_fraction",)
"""Features computed from ``bucket_start`` rather than stored: ``day_fraction`` is the bucket's
time of day (UTC) as a fraction of a day, in [0, 1)."""

CONTEXT_BUCKETS = 48
"""Buckets of history before a run's window that a chunk carries as context rows."""

CONTEXT_COLUMN = "context"
"""Optional boolean chunk column: the row is history before the run's window, given to models
that compare a bucket with its recent past; it is not scored into the predictions file."""

SENSITIVITY_METADATA = "scoring.sensitivity"
"""Chunk schema metadata: the score at or above which a bucket is flagged (default 0.5)."""
DEFAULT_SENSITIVITY = 0.5

SENSITIVITY_COLUMN = "sensitivity"
"""Optional float chunk column: the row's sensitivity, used instead of the chunk's metadata
(a sensor whose false alarms an operator reported gets a higher one)."""

DEFAULT_BUCKET = "1min"
"""Default bucket width (a pandas offset alias; the SQL side uses the same width)."""

KEY_COLUMNS: tuple[str, ...] = ("device", "sensor", "bucket_start")
MODEL_COLUMNS: tuple[str, ...] = ("model_file", "model_version")
CHUNK_COLUMNS: tuple[str, ...] = KEY_COLUMNS + AGGREGATES + MODEL_COLUMNS
"""Columns of a chunk file (``<chunk_id>.parquet``)."""

PREDICTION_COLUMNS: tuple[str, ...] = (
    KEY_COLUMNS + AGGREGATES + ("score", "is_anomaly", "model_version")
)
"""Columns of a predictions file (``<chunk_id>.predictions.parquet``)."""

EXPLANATION_COLUMNS: tuple[str, ...] = ("expected_low", "expected_high", "explanation")
"""Optional, nullable columns a predictions file carries after :data:`PREDICTION_COLUMNS`
(:mod:`scoring.explain`): the band the bucket's mean was expected in (rows of sensors with a
flagged bucket) and, for flagged rows, why, as a JSON object. Files without them (from an older
scoring step) are recorded with nulls there."""

ERROR_COLUMNS: tuple[str, ...] = ("device", "sensor", "reason")
"""Columns of an errors file (``<chunk_id>.errors.parquet``)."""


def derived_feature(name: str, bucket_start_us: np.ndarray) -> np.ndarray:
    """A :data:`DERIVED_FEATURES` column from bucket starts (microseconds since the epoch, UTC)."""
    if name == "day_fraction":
        day_us = 86_400 * 1_000_000
        return (np.asarray(bucket_start_us, dtype=np.int64) % day_us) / day_us
    raise KeyError(f"unknown derived feature {name!r}")


def aggregate_readings(
    readings: pd.DataFrame,
    *,
    bucket: str = DEFAULT_BUCKET,
    time_column: str = "ts",
    value_column: str = "value",
) -> pd.DataFrame:
    """Aggregate raw readings into per-bucket features.

    Parameters
    ----------
    readings : pandas.DataFrame
        One row per reading with columns ``device``, ``sensor``, `time_column` and
        `value_column`. Timestamps without a time zone are taken as UTC.
    bucket : str, default "1min"
        Bucket width as a pandas offset alias. Buckets are half-open ``[start, start+width)``.
    time_column, value_column : str
        Names of the timestamp and value columns.

    Returns
    -------
    pandas.DataFrame
        Columns ``device``, ``sensor``, ``bucket_start`` (UTC) and :data:`AGGREGATES`; ``std``
        is the population standard deviation (0 for a bucket with a single reading), matching
        SQL's ``STDEVP``/``stddev_pop``.
    """
    import pandas as pd  # imported here so that the scoring step never pays for pandas

    ts = pd.to_datetime(readings[time_column], utc=True)
    frame = pd.DataFrame(
        {
            "device": readings["device"].astype(str).to_numpy(),
            "sensor": readings["sensor"].astype(str).to_numpy(),
            "bucket_start": ts.dt.floor(bucket).to_numpy(),
            "value": readings[value_column].astype("float64").to_numpy(),
        }
    )
    grouped = frame.groupby(["device", "sensor", "bucket_start"], sort=True)["value"]
    out = grouped.agg(["count", "mean", "min", "max"])
    # ddof=0: population std, so a bucket of identical readings (a stuck sensor) is exactly 0.
    out["std"] = grouped.std(ddof=0).fillna(0.0)
    out = out.reset_index()
    out["count"] = out["count"].astype("int64")
    out["bucket_start"] = out["bucket_start"].astype("datetime64[us, UTC]")
    return out[list(KEY_COLUMNS + AGGREGATES)]
