"""The training step: training chunk files in, model-set files and per-chunk summaries out.

Run as ``python -m scoring.train --chunks DIR --output DIR --models-output DIR [--chunk FILE
...]``; the same code runs on an Azure ML node (the job's code snapshot holds only this package)
and in the local executor's process pool, as :mod:`scoring.score` does for scoring.

A training chunk ``<chunk_id>.parquet`` holds the per-bucket aggregates of its sensors over the
trailing training window (``device, sensor, bucket_start, count, mean, min, max, std``, sorted by
sensor and time) and ``model_version``, the version the registry assigned to each sensor's new
model. Its schema metadata says how to train: ``training.job_id``, ``training.key`` (the training
key), ``training.estimator`` (a name from :func:`scoring.estimators.estimator_templates`),
``training.features`` (JSON list), ``training.target_rate`` and ``training.set_id``.

For every chunk it writes, each atomically (temp name, then rename), in this order:

1. ``<models-output>/<set_id>.<ext>``: one model set with the chunk's fitted models (none when
   no sensor could be fitted);
2. ``<output>/<chunk_id>.training.json``: the summary that completion registers from: the
   chunk, job and training key, the model set file and format, each model's key, sample count,
   threshold and calibration, and each failed sensor with its reason (``failed``). An unreadable
   chunk gets a summary with ``chunk_error`` and nothing else.

A sensor whose fit fails (too few finite buckets, an estimator that raises, a version that is not
one number) fails alone: it is listed with the reason and the chunk's other sensors are fitted.
The summary comes last because completion reads it: the model set it names is already there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scoring.features import AGGREGATES, DERIVED_FEATURES, derived_feature

log = logging.getLogger(__name__)

CHUNK_SUFFIX = ".parquet"
SUMMARY_SUFFIX = ".training.json"
META_CHUNK_ID = "training.chunk_id"
META_JOB_ID = "training.job_id"
META_KEY = "training.key"
META_ESTIMATOR = "training.estimator"
META_FEATURES = "training.features"
META_TARGET_RATE = "training.target_rate"
META_SET_ID = "training.set_id"
META_KEYS = (
    META_CHUNK_ID,
    META_JOB_ID,
    META_KEY,
    META_ESTIMATOR,
    META_FEATURES,
    META_TARGET_RATE,
    META_SET_ID,
)
TRAINING_COLUMNS: tuple[str, ...] = (
    "device",
    "sensor",
    "bucket_start",
    *AGGREGATES,
    "model_version",
)
"""Columns of a training chunk file."""


@dataclass
class TrainingSummary:
    """Counts of one :func:`train_chunks` call."""

    chunks: int = 0
    chunks_failed: int = 0
    sensors_fitted: int = 0
    sensors_failed: int = 0
    seconds: float = 0.0
    failed_chunks: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def summary_name(chunk_id: str) -> str:
    return f"{chunk_id}{SUMMARY_SUFFIX}"


def chunk_id_of(path: str | os.PathLike) -> str:
    name = Path(path).name
    return name[: -len(CHUNK_SUFFIX)] if name.endswith(CHUNK_SUFFIX) else name


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _read_chunk(path: Path) -> tuple[pa.Table, dict[str, Any]]:
    """The chunk's rows (sorted by sensor and time) and its training spec from the metadata."""
    table = pq.read_table(path)
    missing = [c for c in TRAINING_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"training chunk lacks columns {missing}")
    metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    absent = [k for k in META_KEYS if k not in metadata]
    if absent:
        raise ValueError(f"training chunk lacks metadata {absent}")
    features = json.loads(metadata[META_FEATURES])
    if (
        not isinstance(features, list)
        or not features
        or not all(isinstance(f, str) for f in features)
    ):
        raise ValueError(f"training.features is {metadata[META_FEATURES]!r}, not a list of names")
    unknown = [f for f in features if f not in AGGREGATES and f not in DERIVED_FEATURES]
    if unknown:
        raise ValueError(f"training.features names unknown features {unknown}")
    rate = float(metadata[META_TARGET_RATE])
    spec = {
        "chunk_id": metadata[META_CHUNK_ID],
        "job_id": metadata[META_JOB_ID],
        "training_key": metadata[META_KEY],
        "estimator": metadata[META_ESTIMATOR],
        "features": tuple(features),
        "target_rate": rate,
        "set_id": metadata[META_SET_ID],
    }
    table = table.select(list(TRAINING_COLUMNS))
    table = table.set_column(0, "device", table["device"].cast(pa.string()))
    table = table.set_column(1, "sensor", table["sensor"].cast(pa.string()))
    table = table.sort_by(
        [("device", "ascending"), ("sensor", "ascending"), ("bucket_start", "ascending")]
    )
    return table.combine_chunks(), spec


def _feature_matrix(table: pa.Table, features: Sequence[str]) -> np.ndarray:
    columns = []
    for name in features:
        if name in DERIVED_FEATURES:
            starts = (
                table.column("bucket_start").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
            )
            columns.append(derived_feature(name, starts.to_numpy()))
        else:
            columns.append(table.column(name).to_numpy().astype(np.float64))
    return np.column_stack(columns) if columns else np.empty((table.num_rows, 0))


def sensor_slices(table: pa.Table) -> list[tuple[str, str, int, int]]:
    """(device, sensor, first row, end row) of each sensor of a table sorted by sensor."""
    if table.num_rows == 0:
        return []
    devices = table.column("device").to_numpy(zero_copy_only=False)
    sensors = table.column("sensor").to_numpy(zero_copy_only=False)
    change = np.flatnonzero((devices[1:] != devices[:-1]) | (sensors[1:] != sensors[:-1])) + 1
    bounds = np.concatenate([[0], change, [len(devices)]])
    return [
        (str(devices[a]), str(sensors[a]), int(a), int(b))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def train_chunk(
    chunk_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    models_output_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Fit every sensor of one training chunk; write its model set and summary; return the
    summary (see the module docstring)."""
    from scoring.estimators import estimator_templates
    from scoring.model_sets import model_set_filename
    from scoring.modeling import fit_sensor_model, model_set_format, write_model_set

    started = time.perf_counter()
    chunk_path = Path(chunk_path)
    output_dir, models_output_dir = Path(output_dir), Path(models_output_dir)
    chunk_id = chunk_id_of(chunk_path)
    summary: dict[str, Any] = {
        "chunk_id": chunk_id,
        "models": [],
        "failed": [],
        "chunk_error": None,
    }
    try:
        table, spec = _read_chunk(chunk_path)
        if spec["chunk_id"] != chunk_id:
            raise ValueError(f"the file is chunk {spec['chunk_id']!r}'s, not {chunk_id!r}'s")
        templates = estimator_templates()
        if spec["estimator"] not in templates:
            raise ValueError(
                f"unknown estimator {spec['estimator']!r}; known: {', '.join(templates)}"
            )
    except Exception as exc:  # noqa: BLE001 - an unusable chunk is reported, not raised
        summary["chunk_error"] = f"training chunk could not be read: {_describe(exc)}"
        log.error("chunk %s: %s", chunk_id, summary["chunk_error"])
        _write_atomic(output_dir / summary_name(chunk_id), json.dumps(summary).encode())
        return summary
    summary.update({k: v for k, v in spec.items() if k != "features"})
    summary["features"] = list(spec["features"])
    template = templates[spec["estimator"]]
    X_all = _feature_matrix(table, spec["features"])
    versions = table.column("model_version")
    fitted = []
    for device, sensor, a, b in sensor_slices(table):
        try:
            distinct = pc.unique(versions.slice(a, b - a)).to_pylist()
            if len(distinct) != 1 or distinct[0] is None:
                raise ValueError(f"model_version is {distinct[:5]}, not one version")
            model = fit_sensor_model(
                device,
                sensor,
                int(distinct[0]),
                X_all[a:b],
                features=spec["features"],
                estimator=template(),
                target_false_alarm_rate=spec["target_rate"],
                flagged=np.zeros(b - a, dtype=bool),
            )
            fitted.append(model)
        except Exception as exc:  # noqa: BLE001 - one sensor's failure is reported, not fatal
            summary["failed"].append({"device": device, "sensor": sensor, "reason": _describe(exc)})
    summary["set_file"] = summary["format"] = None
    if fitted:
        fmt = model_set_format(fitted)
        set_file = model_set_filename(spec["set_id"], fmt)
        models_output_dir.mkdir(parents=True, exist_ok=True)
        write_model_set(models_output_dir / set_file, fitted, format=fmt)
        summary["set_file"], summary["format"] = set_file, fmt
        summary["models"] = [
            {
                "device": m.device,
                "sensor": m.sensor,
                "version": int(m.version),
                "n_samples": int(m.calibration.get("n_samples", 0)),
                "threshold": float(m.threshold),
                "calibration": m.calibration,
            }
            for m in fitted
        ]
    summary["seconds"] = round(time.perf_counter() - started, 3)
    # Last: completion reads this file, and the model set it names must already be there.
    _write_atomic(output_dir / summary_name(chunk_id), json.dumps(summary, default=float).encode())
    if summary["failed"]:
        log.warning("chunk %s: %d sensor(s) failed", chunk_id, len(summary["failed"]))
    return summary


def _resolve_chunks(chunks_dir: Path, chunk_files: Sequence[str] | None) -> list[Path]:
    if chunk_files is None:
        return sorted(p for p in chunks_dir.glob(f"*{CHUNK_SUFFIX}") if not p.name.startswith("."))
    return [
        chunks_dir / name if not Path(name).is_absolute() else Path(name) for name in chunk_files
    ]


def train_chunks(
    chunks_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    models_output_dir: str | os.PathLike,
    *,
    chunk_files: Sequence[str] | None = None,
) -> TrainingSummary:
    """Train every chunk (``chunk_files``, default every ``*.parquet`` of ``chunks_dir``)."""
    started = time.perf_counter()
    output_dir, models_output_dir = Path(output_dir), Path(models_output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    models_output_dir.mkdir(parents=True, exist_ok=True)
    result = TrainingSummary()
    for path in _resolve_chunks(Path(chunks_dir), chunk_files):
        summary = train_chunk(path, output_dir, models_output_dir)
        result.chunks += 1
        result.sensors_fitted += len(summary["models"])
        result.sensors_failed += len(summary["failed"])
        if summary["chunk_error"]:
            result.chunks_failed += 1
            result.failed_chunks.append(summary["chunk_id"])
    result.seconds = time.perf_counter() - started
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; 0 when every chunk has its summary file (failed sensors and
    unreadable chunks included: their reasons are in the summaries), else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m scoring.train",
        description="Fit one model per sensor of training chunk files; print a JSON summary.",
    )
    parser.add_argument("--chunks", required=True, help="folder of <chunk_id>.parquet files")
    parser.add_argument("--output", required=True, help="folder for <chunk_id>.training.json")
    parser.add_argument("--models-output", required=True, help="folder for the model set files")
    parser.add_argument(
        "--chunk", action="append", dest="chunk_files", metavar="FILE", help="repeatable"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = train_chunks(
        args.chunks, args.output, args.models_output, chunk_files=args.chunk_files
    )
    print(summary.to_json(), flush=True)
    chunks = _resolve_chunks(Path(args.chunks), args.chunk_files)
    missing = [
        chunk_id_of(p)
        for p in chunks
        if not (Path(args.output) / summary_name(chunk_id_of(p))).exists()
    ]
    if missing:
        log.error("no summary for chunk(s) %s", ", ".join(missing))
        return 1
    return 0


if __name__ == "__main__":
    from scoring.train import main as _main

    sys.exit(_main())
