"""Training: fit every sensor's model from its buckets in SQL, calibrate, register, activate.

For a training window ``[start, end)`` the features come from the same SQL aggregation the
scheduled run uses (``shared.features``), so training and scoring see identical buckets. Sensors
with fewer than ``MIN_TRAINING_BUCKETS`` buckets are skipped and reported, not fitted.

Re-training is idempotent per *training key* (window + estimator + features + bucket length +
false-alarm target): a sensor that already has a model from the same key is skipped, so
re-running a training command adds nothing. Models of one training call are packed into model
sets of up to ``MODELS_PER_SET`` models (one blob each), uploaded, then registered and activated
in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from sqlalchemy import insert

# The named estimators live with the training step (scoring/), which runs them on Azure ML
# nodes; re-exported here for the CLI, the API and the benches.
from scoring.estimators import (  # noqa: F401
    DEFAULT_ESTIMATOR,
    estimator_features,
    estimator_templates,
)
from scoring.score import worker_context
from shared.blobs import model_set_blob
from shared.clock import utcnow
from shared.context import AppContext
from shared.db.schema import model_sets, models
from shared.features import aggregate_features
from shared.models.registry import activate_many, next_versions, trained_with_key

log = logging.getLogger(__name__)

MODELS_PER_SET = 10_000
# Sensors fitted per task in the training pool: enough to amortise process hand-off.
FIT_BATCH = 200


@dataclass
class TrainingReport:
    training_key: str
    window: tuple[datetime, datetime]
    estimator: str
    trained: list[tuple[str, str, int]] = field(default_factory=list)
    already_trained: list[tuple[str, str]] = field(default_factory=list)
    too_few_buckets: list[tuple[str, str, int]] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    model_sets: list[str] = field(default_factory=list)
    excluded_flagged: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "training_key": self.training_key,
            "window": [self.window[0].isoformat(), self.window[1].isoformat()],
            "estimator": self.estimator,
            "trained": len(self.trained),
            "already_trained": len(self.already_trained),
            "too_few_buckets": [
                {"device": d, "sensor": s, "buckets": n} for d, s, n in self.too_few_buckets
            ],
            "failed": [{"device": d, "sensor": s, "reason": r} for d, s, r in self.failed],
            "model_sets": self.model_sets,
            "excluded_flagged_buckets": self.excluded_flagged,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def training_key(
    start: datetime,
    end: datetime,
    estimator: str,
    features: Sequence[str],
    bucket_seconds: int,
    target_rate: float,
    exclude_flagged: bool = False,
) -> str:
    spec = [start.isoformat(), end.isoformat(), estimator, list(features), bucket_seconds]
    spec.append(target_rate)
    if exclude_flagged:  # (the default keeps the keys trained before it existed)
        spec.append("without-flagged")
    spec = json.dumps(spec)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _fit_batch(
    batch: list[tuple[str, str, int, np.ndarray, np.ndarray]],
    features: tuple[str, ...],
    estimator_name: str,
    target_rate: float,
) -> list[tuple[str, str, Any, str | None]]:
    """Fit a batch of sensors (runs in a pool worker); returns (device, sensor, model, error)."""
    from scoring.modeling import fit_sensor_model

    template = estimator_templates()[estimator_name]
    out = []
    for device, sensor, version, X, flagged in batch:
        try:
            model = fit_sensor_model(
                device,
                sensor,
                version,
                X,
                features=features,
                estimator=template(),
                target_false_alarm_rate=target_rate,
                flagged=flagged,
            )
            out.append((device, sensor, model, None))
        except Exception as exc:  # noqa: BLE001 - one sensor's failure is reported, not fatal
            out.append((device, sensor, None, f"{type(exc).__name__}: {exc}"))
    return out


def _feature_column(table: pa.Table, name: str) -> np.ndarray:
    from scoring.features import DERIVED_FEATURES, derived_feature

    if name in DERIVED_FEATURES:
        return derived_feature(name, table.column("bucket_start").cast(pa.int64()).to_numpy())
    return table.column(name).to_numpy().astype(np.float64)


def _per_sensor_matrices(
    table: pa.Table, features: Sequence[str], flagged: np.ndarray | None = None
) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """Split the features table (sorted by device, sensor, bucket) into one matrix per sensor
    (rows in time order)."""
    if table.num_rows == 0:
        return []
    devices = table.column("device").to_numpy(zero_copy_only=False)
    sensors = table.column("sensor").to_numpy(zero_copy_only=False)
    X = np.column_stack([_feature_column(table, f) for f in features])
    change = np.flatnonzero((devices[1:] != devices[:-1]) | (sensors[1:] != sensors[:-1])) + 1
    bounds = np.concatenate([[0], change, [len(devices)]])
    flagged = np.zeros(len(devices), dtype=bool) if flagged is None else flagged
    return [
        (str(devices[a]), str(sensors[a]), X[a:b], flagged[a:b])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _flagged_mask(
    conn,
    table: pa.Table,
    start: datetime,
    end: datetime,
    devices: Sequence[str] | None,
    sensors: Sequence[tuple[str, str]] | None,
) -> np.ndarray:
    """Which rows of the features table earlier runs flagged (the newest run's prediction of
    the bucket, as anomaly events count them).

    Only flagged buckets cross to Python (few: a flag is rare by construction). Buckets inside
    the spans of events an operator marked as false alarms (``shared.feedback``) are not
    marked: the operator said they are normal.
    """
    from sqlalchemy import and_, or_, select, true

    from shared.db.schema import predictions
    from shared.events.tracking import newest_prediction
    from shared.features import MAX_LISTED_SENSORS, sensor_range

    q = predictions.alias("q")
    query = select(q.c.device, q.c.sensor, q.c.bucket_start).where(
        q.c.bucket_start >= start,
        q.c.bucket_start < end,
        q.c.is_anomaly == true(),
        newest_prediction(q),
    )
    if devices:
        query = query.where(q.c.device.in_(list(devices)))
    if sensors and len(sensors) <= MAX_LISTED_SENSORS:
        query = query.where(or_(*(and_(q.c.device == d, q.c.sensor == s) for d, s in sensors)))
    elif sensors:
        query = query.where(sensor_range(q.c.device, q.c.sensor, sensors))
    flagged = conn.execute(query).all()
    mask = np.zeros(table.num_rows, dtype=bool)
    if not flagged:
        return mask
    keep_spans = _false_alarm_spans(conn, start, end, sensors)
    drop: dict[tuple[str, str], set[int]] = {}
    for device, sensor, bucket_start in flagged:
        at = _micros(bucket_start)
        spans = keep_spans.get((device, sensor), ())
        if any(a <= at < b for a, b in spans):
            continue
        drop.setdefault((device, sensor), set()).add(at)
    if not drop:
        return mask
    devices_a = table.column("device").to_numpy(zero_copy_only=False)
    sensors_a = table.column("sensor").to_numpy(zero_copy_only=False)
    starts_a = table.column("bucket_start").cast(pa.int64()).to_numpy()
    for (device, sensor), buckets in drop.items():
        rows = np.flatnonzero((devices_a == device) & (sensors_a == sensor))
        mask[rows] = np.isin(starts_a[rows], np.fromiter(buckets, dtype=np.int64))
    return mask


def _false_alarm_spans(conn, start, end, sensors) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """Spans (microseconds) of events an operator marked as false alarms, by sensor."""
    from shared.feedback import false_alarm_spans

    spans: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for device, sensor, a, b in false_alarm_spans(conn, sensors, start, end):
        spans.setdefault((device, sensor), []).append((_micros(a), _micros(b)))
    return spans


def _micros(ts: datetime) -> int:
    """Microseconds since the epoch of a UTC time (naive or aware), as bucket starts are kept."""
    return int((ts.replace(tzinfo=None) - datetime(1970, 1, 1)).total_seconds() * 1_000_000)


def train_models(
    ctx: AppContext,
    start: datetime,
    end: datetime,
    *,
    devices: Sequence[str] | None = None,
    sensors: Sequence[tuple[str, str]] | None = None,
    estimator: str = DEFAULT_ESTIMATOR,
    features: Sequence[str] | None = None,
    activate_new: bool = True,
    exclude_flagged: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TrainingReport:
    """Train, register and (by default) activate models for ``[start, end)``; see module doc.

    With ``exclude_flagged``, buckets that an earlier run flagged (the newest run's prediction
    of the bucket, as anomaly events count them) are marked, so an anomaly inside the training
    span does not teach the model that it is normal: the default detector leaves them out of
    the range it calls normal, other estimators out of their fit (see
    :func:`scoring.modeling.fit_sensor_model`); buckets of events an operator marked as false
    alarms are not marked (see :func:`_flagged_mask`).

    It is off by default because it feeds on itself, measured on NAB's 44 series (the replay of
    ``evaluate nab``): every flag narrows the next model, which then flags more, and a recurring
    peak is never learnt as normal. The NAB standard score fell from 66.1 to 53.6 (buckets left
    out entirely) and 55.1 (left out of the range only), and the most flagged series went from
    9.7% to 26-32% of its rows. The default detector is robust without it: medians and
    interquartile ranges ignore a minority of anomalous buckets, and the novelty range accepts
    a value only after it has held (``scoring.baseline.ACCEPT_BUCKETS``).
    """
    from scoring.model_sets import model_set_filename
    from scoring.modeling import model_set_format, write_model_set

    settings = ctx.settings
    features = tuple(features or estimator_features(estimator))
    if estimator not in estimator_templates():
        raise ValueError(
            f"unknown estimator {estimator!r}; known: {', '.join(estimator_templates())}"
        )
    key = training_key(
        start,
        end,
        estimator,
        features,
        settings.bucket_seconds,
        settings.target_false_alarm_rate,
        exclude_flagged,
    )
    report = TrainingReport(key, (start, end), estimator)

    started = time.perf_counter()
    with ctx.engine.connect() as conn:
        table = aggregate_features(conn, start, end, settings.bucket_seconds, devices, sensors)
        done = trained_with_key(conn, key)
        flagged = (
            _flagged_mask(conn, table, start, end, devices, sensors)
            if exclude_flagged and table.num_rows
            else np.zeros(table.num_rows, dtype=bool)
        )
        report.excluded_flagged = int(flagged.sum())
    per_sensor = _per_sensor_matrices(table, features, flagged)
    report.seconds["aggregate"] = time.perf_counter() - started

    todo: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    for device, sensor, X, flags in per_sensor:
        if (device, sensor) in done:
            report.already_trained.append((device, sensor))
        elif len(X) < settings.min_training_buckets:
            report.too_few_buckets.append((device, sensor, len(X)))
        else:
            todo.append((device, sensor, X, flags))
    if not todo:
        return report

    started = time.perf_counter()
    with ctx.engine.connect() as conn:
        versions = next_versions(conn, [(d, s) for d, s, _, _ in todo])
    batches = [
        [(d, s, versions[(d, s)], X, flags) for d, s, X, flags in todo[i : i + FIT_BATCH]]
        for i in range(0, len(todo), FIT_BATCH)
    ]
    fitted: list = []
    workers = max(1, min(workers or settings.local_workers, len(batches)))
    args = (features, estimator, settings.target_false_alarm_rate)
    if workers == 1:
        results = (_fit_batch(b, *args) for b in batches)
        for batch_result in results:
            fitted += batch_result
            if progress:
                progress(len(fitted), len(todo))
    else:
        with ProcessPoolExecutor(
            workers, mp_context=worker_context(["shared.models.training"])
        ) as pool:
            for batch_result in pool.map(_fit_batch, batches, *[[a] * len(batches) for a in args]):
                fitted += batch_result
                if progress:
                    progress(len(fitted), len(todo))
    report.seconds["fit"] = time.perf_counter() - started

    good = [m for _, _, m, err in fitted if err is None]
    report.failed = [(d, s, err) for d, s, _, err in fitted if err is not None]
    started = time.perf_counter()
    now = utcnow()
    set_rows, model_rows = [], []
    with tempfile.TemporaryDirectory(prefix="model-sets-") as tmp:
        for part in range(0, len(good), MODELS_PER_SET):
            members = good[part : part + MODELS_PER_SET]
            fmt = model_set_format(members)
            member_digest = hashlib.sha256(
                "\n".join(f"{m.device}/{m.sensor}/{m.version}" for m in members).encode()
            ).hexdigest()[:8]
            set_id = f"set-{end:%Y%m%dT%H%M}-{key[:8]}-{member_digest}"
            file_name = model_set_filename(set_id, fmt)
            path = Path(tmp) / file_name
            write_model_set(path, members, format=fmt)
            blob = model_set_blob(file_name)
            ctx.store.upload_file(settings.models_container, blob, path)
            report.model_sets.append(file_name)
            set_rows.append(
                {
                    "set_id": set_id,
                    "format": fmt,
                    "blob_path": blob,
                    "n_models": len(members),
                    "train_start": start,
                    "train_end": end,
                    "created_at": now,
                }
            )
            model_rows += [
                {
                    "device": m.device,
                    "sensor": m.sensor,
                    "version": m.version,
                    "set_id": set_id,
                    "format": fmt,
                    "blob_path": blob,
                    "training_key": key,
                    "estimator": estimator,
                    "features": ",".join(m.features),
                    "train_start": start,
                    "train_end": end,
                    "n_samples": int(m.calibration.get("n_samples", 0)),
                    "threshold": float(m.threshold),
                    "calibration": json.dumps(m.calibration, default=float),
                    "created_at": now,
                }
                for m in members
            ]
    report.seconds["store"] = time.perf_counter() - started

    started = time.perf_counter()
    with ctx.engine.begin() as conn:
        if set_rows:
            conn.execute(insert(model_sets), set_rows)
            conn.execute(insert(models), model_rows)
        if activate_new:
            activate_many(conn, [(m.device, m.sensor, m.version) for m in good])
    report.trained = [(m.device, m.sensor, m.version) for m in good]
    report.seconds["register"] = time.perf_counter() - started
    log.info(
        "trained models",
        extra={"training": report.as_dict() | {"too_few_buckets": len(report.too_few_buckets)}},
    )
    return report
