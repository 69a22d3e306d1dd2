"""The scoring step: chunk files + model set files in, prediction (and error) files out.

Run as ``python -m scoring.score --chunks DIR --models DIR --output DIR [--chunk FILE ...]
[--workers N]``; the same code runs on an Azure ML node (as the job's code snapshot) and in the
local process pool. It imports only numpy, pyarrow and this package; scikit-learn and skops are
imported only when a ``"skops"`` model set is used.

For every chunk ``<chunk_id>.parquet`` it writes, in this order and each atomically (temp name,
then rename):

1. ``<chunk_id>.errors.parquet`` (device, sensor, reason) when any sensor failed; an unreadable
   chunk gets one row with null device and sensor and the reason;
2. ``<chunk_id>.predictions.parquet`` with the scored rows and schema metadata
   ``scoring.chunk_id`` and ``scoring.errors`` (number of failed sensors); for an unreadable
   chunk it is empty and ``scoring.chunk_error`` holds the reason. After the prediction columns
   come the nullable explanation columns (:mod:`scoring.explain`): for sensors with a flagged
   window row, the band the mean was expected in and, per flagged row, why (JSON); computed
   after scoring for those sensors only, and left null (with a warning) if explaining fails.

The predictions file comes last because a blob trigger fires on it: the errors file it may point
to must already exist. A sensor-level problem (missing model set or key, corrupt or untrusted
model, NaN/inf features, feature count mismatch) fails that sensor only.

The hot path has no per-sensor Python: rows are grouped by sensor with numpy (dictionary codes,
one stable sort, run starts), models are looked up with one Arrow hash join, each group's
features are gathered into an ``(n_sensors, n_buckets, n_features)`` tensor and evaluated in
blocks by :mod:`scoring.kernels`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scoring.explain import ScoredGroup, empty_columns, explain_chunk
from scoring.features import (
    AGGREGATES,
    CHUNK_COLUMNS,
    CONTEXT_COLUMN,
    DEFAULT_SENSITIVITY,
    DERIVED_FEATURES,
    ERROR_COLUMNS,
    EXPLANATION_COLUMNS,
    PREDICTION_COLUMNS,
    SENSITIVITY_COLUMN,
    SENSITIVITY_METADATA,
    derived_feature,
)
from scoring.model_sets import ModelSet, load_model_set

log = logging.getLogger(__name__)

CHUNK_SUFFIX = ".parquet"
PREDICTIONS_SUFFIX = ".predictions.parquet"
ERRORS_SUFFIX = ".errors.parquet"
METADATA_CHUNK_ID = "scoring.chunk_id"
METADATA_ERRORS = "scoring.errors"
METADATA_CHUNK_ERROR = "scoring.chunk_error"
MAX_CACHED_SETS = 32
"""Model sets kept loaded per process (a 10,000-model npz set is ~25 MiB)."""

_DICTIONARY_COLUMNS = ["device", "sensor", "model_file"]
_CHUNK_SCHEMA = pa.schema(
    [
        ("device", pa.dictionary(pa.int32(), pa.string())),
        ("sensor", pa.dictionary(pa.int32(), pa.string())),
        ("bucket_start", pa.timestamp("us", tz="UTC")),
        ("count", pa.int64()),
        ("mean", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("std", pa.float64()),
        ("model_file", pa.dictionary(pa.int32(), pa.string())),
        ("model_version", pa.int64()),
    ]
)
_PREDICTION_TYPES = {
    "device": pa.string(),
    "sensor": pa.string(),
    "bucket_start": pa.timestamp("us", tz="UTC"),
    "count": pa.int64(),
    "mean": pa.float64(),
    "min": pa.float64(),
    "max": pa.float64(),
    "std": pa.float64(),
    "score": pa.float64(),
    "is_anomaly": pa.bool_(),
    "model_version": pa.int64(),
    "expected_low": pa.float64(),
    "expected_high": pa.float64(),
    "explanation": pa.string(),
}
_ERRORS_SCHEMA = pa.schema([(name, pa.string()) for name in ERROR_COLUMNS])
# Dictionary-encode only the repetitive columns: trying it on float columns (which fall back
# to plain) costs more than the rest of the write.
_PREDICTION_DICTIONARY = ["device", "sensor", "bucket_start", "count", "model_version"]


@dataclass
class ChunkResult:
    """Outcome of one chunk (``error`` is set when the chunk file itself was unusable)."""

    chunk_id: str
    sensors_scored: int = 0
    sensors_failed: int = 0
    rows_written: int = 0
    error: str | None = None


@dataclass
class ScoreSummary:
    """Counts of one :func:`score_chunks` call.

    Attributes
    ----------
    chunks : int
        Chunk files processed (read or not).
    chunks_failed : int
        Chunk files that could not be read (each got an errors file, no predictions file).
    sensors_scored, sensors_failed : int
        Sensors with predictions / listed in an errors file.
    rows_written : int
        Prediction rows written.
    seconds : float
        Wall time of the call.
    failed_chunks : list of str
        Ids of the chunks counted in `chunks_failed`.
    """

    chunks: int = 0
    chunks_failed: int = 0
    sensors_scored: int = 0
    sensors_failed: int = 0
    rows_written: int = 0
    seconds: float = 0.0
    failed_chunks: list[str] = field(default_factory=list)

    def add(self, result: ChunkResult) -> None:
        """Count one chunk's result."""
        self.chunks += 1
        self.sensors_scored += result.sensors_scored
        self.sensors_failed += result.sensors_failed
        self.rows_written += result.rows_written
        if result.error is not None:
            self.chunks_failed += 1
            self.failed_chunks.append(result.chunk_id)

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(asdict(self), sort_keys=True)


class ModelSetCache:
    """Model sets of one models folder, loaded once per process (LRU, failures cached too).

    Keyed by file name and modification stamp, so a model set rewritten in place is reloaded.
    """

    def __init__(self, models_dir: str | os.PathLike, max_sets: int = MAX_CACHED_SETS):
        self.models_dir = Path(models_dir)
        self.max_sets = max_sets
        self._sets: OrderedDict[tuple, ModelSet | Exception] = OrderedDict()

    def get(self, name: str) -> ModelSet:
        """The model set file `name` of the models folder; raises why it cannot be loaded."""
        if not name or name != Path(name).name or name in (".", ".."):
            # A chunk must not be able to point the scorer outside the models folder.
            raise ValueError(f"invalid model set file name {name!r}")
        path = self.models_dir / name
        try:
            stat = path.stat()
            key = (name, stat.st_mtime_ns, stat.st_size)
        except OSError:
            raise FileNotFoundError(f"model set file {name!r} not found in models folder") from None
        if key not in self._sets:
            try:
                entry: ModelSet | Exception = load_model_set(path)
            except BaseException as exc:  # noqa: BLE001 - remembered: every sensor of it fails
                entry = _as_model_failure(exc)
            self._sets[key] = entry
            while len(self._sets) > self.max_sets:
                self._sets.popitem(last=False)
        self._sets.move_to_end(key)
        entry = self._sets[key]
        if isinstance(entry, Exception):
            raise entry
        return entry


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _as_model_failure(exc: BaseException) -> Exception:
    """An exception raised by model code (loading, looking up or scoring a stored model), as an
    ordinary failure of the sensors concerned.

    Model files are data from storage, and the libraries that read them may raise anything:
    ``SystemExit`` (a module's command line run on import), ``GeneratorExit``, an exception
    group. None of them may end the scoring step or skip the rest of a chunk, so everything
    but ``KeyboardInterrupt`` (an operator stopping the step) becomes the sensor's or chunk's
    failure with its reason.
    """
    if isinstance(exc, KeyboardInterrupt):
        raise exc
    if isinstance(exc, Exception):
        return exc
    return RuntimeError(f"the model raised {_describe(exc)}")


def chunk_id_of(path: str | os.PathLike) -> str:
    """Chunk id of a chunk file: its name without ``.parquet``."""
    name = Path(path).name
    return name[: -len(CHUNK_SUFFIX)] if name.endswith(CHUNK_SUFFIX) else name


def _write_parquet_atomic(table: pa.Table, path: Path, **options) -> None:
    # Readers (and blob triggers) must never see a half-written file: write aside, then rename.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, **options)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_errors(
    output_dir: Path,
    chunk_id: str,
    devices: list[str | None],
    sensors: list[str | None],
    reasons: list[str],
    *,
    chunk_unreadable: bool = False,
) -> None:
    table = pa.table(
        [pa.array(devices, pa.string()), pa.array(sensors, pa.string()), pa.array(reasons)],
        schema=_ERRORS_SCHEMA.with_metadata(
            {
                METADATA_CHUNK_ID: chunk_id,
                "scoring.chunk_unreadable": "true" if chunk_unreadable else "false",
            }
        ),
    )
    _write_parquet_atomic(table, output_dir / f"{chunk_id}{ERRORS_SUFFIX}")


def _read_chunk(path: Path, use_threads: bool) -> tuple[pa.Table, np.ndarray, float | np.ndarray]:
    """The chunk's columns, its context mask (rows before the window) and its sensitivity: the
    chunk's (metadata), or one per row when the chunk has a ``sensitivity`` column."""
    table = pq.read_table(path, read_dictionary=_DICTIONARY_COLUMNS, use_threads=use_threads)
    missing = [name for name in CHUNK_COLUMNS if name not in table.column_names]
    if missing:
        raise ValueError(f"chunk lacks columns {missing}")
    metadata = table.schema.metadata or {}
    sensitivity = float(metadata.get(SENSITIVITY_METADATA.encode(), DEFAULT_SENSITIVITY))
    if not 0.0 < sensitivity <= 1.0:
        raise ValueError(f"chunk sensitivity {sensitivity} is not in (0, 1]")
    if CONTEXT_COLUMN in table.column_names:
        context = table[CONTEXT_COLUMN].cast(pa.bool_()).fill_null(False).to_numpy()
    else:
        context = np.zeros(table.num_rows, dtype=bool)
    if SENSITIVITY_COLUMN in table.column_names:
        # Per-row sensitivities (a sensor's raised by operator feedback); null: the chunk's.
        per_row = table[SENSITIVITY_COLUMN].cast(pa.float64()).fill_null(sensitivity).to_numpy()
        if not ((per_row > 0.0) & (per_row <= 1.0)).all():
            raise ValueError("chunk column sensitivity has values outside (0, 1]")
        sensitivity = per_row
    table = table.select(list(CHUNK_COLUMNS))
    if not table.schema.equals(_CHUNK_SCHEMA, check_metadata=False):
        table = table.cast(_CHUNK_SCHEMA)  # e.g. int32 counts or naive timestamps (taken as UTC)
    # One dictionary per column (row groups may each carry their own) and one array each.
    return table.unify_dictionaries().combine_chunks(), np.asarray(context, dtype=bool), sensitivity


def _dictionary_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """Codes (nulls as -1), dictionary and null mask of a single-chunk dictionary column."""
    array = column.chunk(0) if column.num_chunks else pa.array([], column.type)
    nulls = array.is_null().to_numpy(zero_copy_only=False)
    codes = array.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, array.dictionary, nulls


def score_chunk(
    chunk_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    models: ModelSetCache,
    *,
    use_threads: bool = True,
) -> ChunkResult:
    """Score one chunk file and write its errors file (if any) and predictions file.

    Parameters
    ----------
    chunk_path : path-like
        The chunk (``<chunk_id>.parquet``).
    output_dir : path-like
        Folder for the output files (must exist).
    models : ModelSetCache
        Model sets of the models folder.
    use_threads : bool
        Let Arrow use its thread pool (off when several worker processes share the cores).

    Returns
    -------
    ChunkResult
    """
    chunk_path, output_dir = Path(chunk_path), Path(output_dir)
    chunk_id = chunk_id_of(chunk_path)
    try:
        table, context, sensitivity = _read_chunk(chunk_path, use_threads)
    except Exception as exc:  # noqa: BLE001 - any unreadable chunk is reported, not raised
        return _fail_chunk(output_dir, chunk_id, f"chunk file could not be read: {_describe(exc)}")
    try:
        return _score_table(table, context, sensitivity, chunk_id, output_dir, models)
    except BaseException as exc:  # noqa: BLE001 - the boundary: see _as_model_failure
        failure = _as_model_failure(exc)
        return _fail_chunk(output_dir, chunk_id, f"chunk could not be scored: {_describe(failure)}")


def _fail_chunk(output_dir: Path, chunk_id: str, reason: str) -> ChunkResult:
    """Write a failed chunk's outputs: an errors file with the reason and an empty predictions
    file carrying it (whoever records predictions, the blob trigger fires on this file, learns
    that the chunk failed, on any executor)."""
    log.error("chunk %s: %s", chunk_id, reason)
    _write_errors(output_dir, chunk_id, [None], [None], [reason], chunk_unreadable=True)
    empty = (
        pa.schema([(name, _PREDICTION_TYPES[name]) for name in PREDICTION_COLUMNS])
        .empty_table()
        .replace_schema_metadata(
            {METADATA_CHUNK_ID: chunk_id, METADATA_ERRORS: "0", METADATA_CHUNK_ERROR: reason}
        )
    )
    _write_parquet_atomic(empty, output_dir / f"{chunk_id}{PREDICTIONS_SUFFIX}")
    return ChunkResult(chunk_id, error=reason)


def _score_table(
    table: pa.Table,
    context: np.ndarray,
    sensitivity,
    chunk_id: str,
    output_dir: Path,
    models: ModelSetCache,
) -> ChunkResult:
    """Score a read chunk and write its outputs (the body of :func:`score_chunk`)."""
    n_rows = table.num_rows
    dev_codes, dev_dict, dev_null = _dictionary_codes(table["device"])
    sen_codes, sen_dict, sen_null = _dictionary_codes(table["sensor"])
    file_codes, file_dict, file_null = _dictionary_codes(table["model_file"])
    version_col = table["model_version"]
    versions = version_col.fill_null(-1).to_numpy().astype(np.int64, copy=False)
    ref_null = file_null | version_col.is_null().to_numpy(zero_copy_only=False)

    # ---- group rows by sensor: one code per (device, sensor), one stable sort at most
    code = (dev_codes + 1) * (len(sen_dict) + 1) + (sen_codes + 1)
    if n_rows and np.all(code[1:] >= code[:-1]):
        order = None  # chunks are usually written grouped by sensor: nothing to sort
        sorted_code = code
    else:
        order = np.argsort(code, kind="stable")
        sorted_code = code[order]
    starts = (
        np.flatnonzero(np.r_[True, sorted_code[1:] != sorted_code[:-1]])
        if n_rows
        else (np.zeros(0, dtype=np.int64))
    )
    counts = np.diff(np.r_[starts, n_rows])
    n_sensors = len(starts)

    def in_sorted(values: np.ndarray) -> np.ndarray:
        return values if order is None else values[order]

    first_rows = starts if order is None else order[starts]
    sensor_devices = dev_dict.take(pa.array(np.maximum(dev_codes[first_rows], 0)))
    sensor_names = sen_dict.take(pa.array(np.maximum(sen_codes[first_rows], 0)))
    sensor_files = file_codes[first_rows]
    sensor_versions = versions[first_rows]

    failures: dict[int, str] = {}

    def fail(positions: np.ndarray, reason: str) -> None:
        for pos in positions.tolist():
            failures.setdefault(pos, reason)

    if n_sensors:
        key_null = np.maximum.reduceat(in_sorted(dev_null | sen_null).astype(np.int8), starts)
        fail(np.flatnonzero(key_null), "row(s) without device or sensor name")
        no_ref = np.maximum.reduceat(in_sorted(ref_null).astype(np.int8), starts)
        fail(np.flatnonzero(no_ref), "row(s) without model_file or model_version")
        sorted_files, sorted_versions = in_sorted(file_codes), in_sorted(versions)
        mixed = (
            np.maximum.reduceat(sorted_files, starts) != np.minimum.reduceat(sorted_files, starts)
        ) | (
            np.maximum.reduceat(sorted_versions, starts)
            != np.minimum.reduceat(sorted_versions, starts)
        )
        fail(np.flatnonzero(mixed), "rows of one sensor name different models")

    scores = np.full(n_rows, np.nan)
    scored_rows = np.zeros(n_rows, dtype=bool)
    feature_columns: dict[str, np.ndarray] = {}

    def feature(name: str) -> np.ndarray:
        if name not in feature_columns:
            if name in DERIVED_FEATURES:
                starts_us = table["bucket_start"].cast(pa.int64()).to_numpy()
                feature_columns[name] = derived_feature(name, starts_us)
            else:
                feature_columns[name] = table[name].to_numpy().astype(np.float64, copy=False)
        return feature_columns[name]

    pending = np.ones(n_sensors, dtype=bool)
    pending[list(failures)] = False
    scored_groups: list[ScoredGroup] = []  # for the explanations (scoring.explain)
    for file_code in np.unique(sensor_files[pending]).tolist():
        in_file = np.flatnonzero(pending & (sensor_files == file_code))
        file_name = file_dict[file_code].as_py()
        try:
            model_set = models.get(file_name)
            model_index = model_set.lookup(
                sensor_devices.take(pa.array(in_file)),
                sensor_names.take(pa.array(in_file)),
                sensor_versions[in_file],
            )
        except BaseException as exc:  # noqa: BLE001 - the set's sensors fail, the chunk goes on
            failure = _as_model_failure(exc)
            fail(in_file, f"model set {file_name!r} could not be loaded: {_describe(failure)}")
            continue
        absent = model_index < 0
        for pos in in_file[absent].tolist():
            failures.setdefault(
                pos,
                f"no model for version {int(sensor_versions[pos])} in model set {file_name!r}",
            )
        found, model_index = in_file[~absent], model_index[~absent]
        feature_set_ids = model_set.feature_set_ids[model_index]
        for feature_set_id in np.unique(feature_set_ids).tolist():
            in_group = feature_set_ids == feature_set_id
            group, group_models = found[in_group], model_index[in_group]
            names = model_set.feature_sets[feature_set_id]
            unknown = [
                name for name in names if name not in AGGREGATES and name not in DERIVED_FEATURES
            ]
            if unknown:
                fail(group, f"model uses features the chunk does not have: {unknown}")
                continue
            try:
                _score_group(
                    model_set,
                    names,
                    group,
                    group_models,
                    starts,
                    counts,
                    order,
                    feature,
                    scores,
                    scored_rows,
                    failures,
                )
                scored_groups.append(ScoredGroup(model_set, names, group, group_models))
            except BaseException as exc:  # noqa: BLE001 - these sensors fail, the chunk goes on
                failure = _as_model_failure(exc)
                fail(group, f"model set {file_name!r} failed while scoring: {_describe(failure)}")

    # ---- explanations (scoring.explain): only sensors with a flagged window row, so rare
    explanation_columns = empty_columns(n_rows)
    try:
        explained = explain_chunk(
            scored_groups,
            starts,
            counts,
            order,
            feature,
            scores,
            scored_rows & ~context,
            sensitivity,
            versions,
        )
        if explained is not None:
            explanation_columns = explained.arrow_columns()
    except Exception as exc:  # noqa: BLE001 - an explanation is never worth a chunk's scores
        log.warning("chunk %s: explanations left out: %s", chunk_id, _describe(exc))

    # ---- outputs: errors first, then predictions (the blob trigger fires on the latter)
    errors_path = output_dir / f"{chunk_id}{ERRORS_SUFFIX}"
    if failures:
        positions = sorted(failures)
        take = pa.array(positions, pa.int64())
        _write_errors(
            output_dir,
            chunk_id,
            sensor_devices.take(take).to_pylist(),
            sensor_names.take(take).to_pylist(),
            [failures[pos] for pos in positions],
        )
    elif errors_path.exists():
        errors_path.unlink()  # stale from an earlier run of this chunk
    predictions = pa.table(
        {
            "device": table["device"].cast(pa.string()),
            "sensor": table["sensor"].cast(pa.string()),
            "bucket_start": table["bucket_start"],
            "count": table["count"],
            "mean": table["mean"],
            "min": table["min"],
            "max": table["max"],
            "std": table["std"],
            "score": pa.array(scores),
            "is_anomaly": pa.array(scores >= sensitivity),
            "model_version": table["model_version"],
            **explanation_columns,
        }
    )
    # Context rows were history for the models, not part of the window: never written.
    keep = scored_rows & ~context
    if not keep.all():
        predictions = predictions.filter(pa.array(keep))
    predictions = predictions.select(
        list(PREDICTION_COLUMNS + EXPLANATION_COLUMNS)
    ).replace_schema_metadata({METADATA_CHUNK_ID: chunk_id, METADATA_ERRORS: str(len(failures))})
    _write_parquet_atomic(
        predictions,
        output_dir / f"{chunk_id}{PREDICTIONS_SUFFIX}",
        compression="snappy",
        use_dictionary=_PREDICTION_DICTIONARY,
        write_statistics=["device", "sensor", "bucket_start", "is_anomaly"],
    )
    if failures:
        log.warning("chunk %s: %d of %d sensors failed", chunk_id, len(failures), n_sensors)
    return ChunkResult(
        chunk_id,
        sensors_scored=n_sensors - len(failures),
        sensors_failed=len(failures),
        rows_written=predictions.num_rows,
    )


def _score_group(
    model_set: ModelSet,
    names: tuple[str, ...],
    group: np.ndarray,
    group_models: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    order: np.ndarray | None,
    feature,
    scores: np.ndarray,
    scored_rows: np.ndarray,
    failures: dict[int, str],
) -> None:
    """Score the sensors at positions `group` (one model set, one feature tuple) in place."""
    group_counts = counts[group]
    width = int(group_counts.max())
    offsets = np.arange(width)
    # Row of each (sensor, bucket) cell; short sensors repeat their last row as padding, so
    # the tensor holds only real (finite-checked) values and padding is simply ignored.
    rows = starts[group][:, None] + np.minimum(offsets, group_counts[:, None] - 1)
    if order is not None:
        rows = order[rows]
    first, last = int(rows[0, 0]), int(rows[-1, -1])
    if (
        (group_counts == width).all()
        and last - first + 1 == rows.size
        and (order is None or (np.diff(rows.ravel()) == 1).all())
    ):
        # The usual case: the group's rows are one contiguous run (slices, no gather).
        X = np.empty((rows.size, len(names)))
        for column, name in enumerate(names):
            X[:, column] = feature(name)[first : last + 1]
        X = X.reshape(len(group), width, len(names))
    else:
        X = np.stack([feature(name)[rows] for name in names], axis=-1)  # (s, b, f)

    finite = np.isfinite(X)
    bad = ~finite.all(axis=(1, 2))
    if bad.any():
        bad_features = ~finite[bad].all(axis=1)  # (n_bad, f)
        for pos, flags in zip(group[bad].tolist(), bad_features, strict=True):
            failures.setdefault(
                pos,
                "non-finite feature values (NaN/inf) in "
                + ", ".join(name for name, flag in zip(names, flags, strict=True) if flag),
            )
        keep = ~bad
        group, group_models, group_counts = group[keep], group_models[keep], group_counts[keep]
        rows, X = rows[keep], X[keep]
        if not len(group):
            return

    result = model_set.score(group_models, X, group_counts)
    ok = np.ones(len(group), dtype=bool)
    for pos, reason in result.failures.items():
        failures.setdefault(int(group[pos]), reason)
        ok[pos] = False
    valid = (offsets[None, :] < group_counts[:, None]) & ok[:, None]
    target = rows[valid]
    scores[target] = model_set.graded_scores(group_models, result.scores)[valid]
    scored_rows[target] = True


# --------------------------------------------------------------------------- many chunks

_worker_models: ModelSetCache | None = None


def worker_context(
    preload: Sequence[str] = ("scoring.score",),
) -> multiprocessing.context.BaseContext:
    """A process context for worker pools: ``forkserver`` preloaded with ``preload`` where the
    platform has it, else ``spawn``.

    Not plain fork: forking a process that already runs Arrow's thread pools (or holds SQL
    connections) can deadlock or share sockets. A fork server is a fresh single-threaded process
    that imports the modules once and forks each worker from itself: as safe as spawn, without
    paying the imports (~0.5 s) in every worker.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    return context


def bind_worker_lifetime() -> None:
    """Make this pool worker die with the process that uses the pool (a worker initializer).

    A worker is forked by the fork server, and the fork server runs until every holder of its
    "alive" pipe has gone, the process that started it and each worker (they inherit a copy).
    A worker blocked on its task queue when that process is killed would keep the pipe, so the
    fork server, and so itself, alive for ever. So each worker drops its copy (the fork server
    then exits as soon as the process that uses it is gone) and, on Linux, asks the kernel to
    kill it when its parent, the fork server, exits (``PR_SET_PDEATHSIG``; the fork server is
    single-threaded, so "parent" cannot mean a thread that ends early).
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive_fd = getattr(server, "_forkserver_alive_fd", None)
    if alive_fd is not None and multiprocessing.parent_process() is not None:
        with contextlib.suppress(OSError):
            os.close(alive_fd)
        server._forkserver_alive_fd = None
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        parent = os.getppid()
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)


def terminate_pool(pool: ProcessPoolExecutor, timeout: float = 5.0) -> None:
    """Shut a pool down without waiting on its workers: terminate them, then kill what is left.

    For a pool that failed (a worker died, a task raised) or was interrupted: ``shutdown(wait=
    True)`` can wait for ever on a worker that was never terminated (killed as the pool
    started, the queues may be left in a state no one reads again)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join(timeout)


def _init_worker(models_dir: str) -> None:
    global _worker_models
    bind_worker_lifetime()
    _worker_models = ModelSetCache(models_dir)


def _score_chunk_in_worker(chunk_path: str, output_dir: str) -> ChunkResult:
    assert _worker_models is not None
    # Arrow's own threads would only fight the other worker processes for the cores.
    return score_chunk(chunk_path, output_dir, _worker_models, use_threads=False)


def _resolve_chunks(
    chunks_dir: Path, chunk_files: Sequence[str | os.PathLike] | None
) -> list[Path]:
    if chunk_files is None:
        return sorted(
            path for path in chunks_dir.glob(f"*{CHUNK_SUFFIX}") if not path.name.startswith(".")
        )
    return [
        chunks_dir / Path(name) if not Path(name).is_absolute() else Path(name)
        for name in chunk_files
    ]


def score_chunks(
    chunks_dir: str | os.PathLike,
    models_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    chunk_files: Sequence[str | os.PathLike] | None = None,
    workers: int = 1,
) -> ScoreSummary:
    """Score chunk files against the model sets of a folder; write predictions and errors.

    Parameters
    ----------
    chunks_dir : path-like
        Folder of chunk files.
    models_dir : path-like
        Folder of model set files (chunks name them in ``model_file``).
    output_dir : path-like
        Folder for ``<chunk_id>.predictions.parquet`` / ``<chunk_id>.errors.parquet``; created
        if needed. Names are deterministic, so a re-run overwrites instead of duplicating.
    chunk_files : sequence of path-like, optional
        Chunk files to score (relative to `chunks_dir` unless absolute); default every
        ``*.parquet`` in `chunks_dir`.
    workers : int
        Worker processes. With more than one, runs of neighbouring chunks are handed out to a
        ``forkserver`` process pool (each worker keeps its own model set cache); 1 scores in this
        process. Each worker costs ~0.5 s to start, so use the number of cores for large runs
        (hundreds of chunks) and 1 for small ones.

    Returns
    -------
    ScoreSummary
    """
    started = time.perf_counter()
    chunks_dir, models_dir, output_dir = Path(chunks_dir), Path(models_dir), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = _resolve_chunks(chunks_dir, chunk_files)
    summary = ScoreSummary()
    if workers <= 1 or len(paths) <= 1:
        cache = ModelSetCache(models_dir)
        for path in paths:
            summary.add(score_chunk(path, output_dir, cache))
    else:
        pool = ProcessPoolExecutor(
            max_workers=min(workers, len(paths)),
            mp_context=worker_context(),
            initializer=_init_worker,
            initargs=(str(models_dir),),
        )
        try:
            # Hand out runs of neighbouring chunks rather than single ones: neighbours tend to
            # share model sets, so each worker loads fewer sets; four runs per worker still
            # balance the load.
            batch = max(1, len(paths) // (4 * workers))
            for result in pool.map(
                _score_chunk_in_worker,
                [str(p) for p in paths],
                repeat(str(output_dir)),
                chunksize=batch,
            ):
                summary.add(result)
        except BaseException:
            terminate_pool(pool)  # a dead worker must end the step, not hang it
            raise
        pool.shutdown(wait=True)
    summary.seconds = time.perf_counter() - started
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code.

    0 whenever every chunk's outcome is in the output files, unreadable chunks and failing
    models included (their reason travels in the predictions and errors files): a failed exit
    would fail the Azure ML step and, through it, chunks of the same run that scored fine.
    Non-zero only when the step could not do its job: an error outside any one chunk (the
    output folder not writable, a worker process killed), or a chunk left without its
    predictions file.
    """
    parser = argparse.ArgumentParser(
        prog="python -m scoring.score",
        description="Score chunk files with per-sensor model sets; print a JSON summary.",
    )
    parser.add_argument("--chunks", required=True, help="folder of <chunk_id>.parquet files")
    parser.add_argument("--models", required=True, help="folder of model set files")
    parser.add_argument("--output", required=True, help="folder for predictions/errors files")
    parser.add_argument(
        "--chunk",
        action="append",
        dest="chunk_files",
        metavar="FILE",
        help="chunk file to score (repeatable; default: every *.parquet in --chunks)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = score_chunks(
        args.chunks, args.models, args.output, chunk_files=args.chunk_files, workers=args.workers
    )
    print(summary.to_json(), flush=True)
    output = Path(args.output)
    chunks = _resolve_chunks(Path(args.chunks), args.chunk_files)
    missing = [
        chunk_id_of(path)
        for path in chunks
        if not (output / f"{chunk_id_of(path)}{PREDICTIONS_SUFFIX}").exists()
    ]
    if missing:
        log.error("no predictions file for chunk(s) %s", ", ".join(missing))
        return 1
    return 0


if __name__ == "__main__":
    # Run through the imported module, not this __main__ copy, so worker processes unpickle
    # functions as scoring.score.* rather than __main__.*.
    from scoring.score import main as _main

    sys.exit(_main())
