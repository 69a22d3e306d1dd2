"""Model sets: many per-sensor models packed in one file, loaded safely, evaluated in bulk.

Scoring 100,000 sensors must not mean 100,000 blob round trips and 100,000 unpicklings, so a
training run writes its models into one *model set* file, keyed by (device, sensor, version).
Two formats:

``"ocsvm-npz"`` (fast path, file ``<set_id>.npz``)
    The default ``StandardScaler + OneClassSVM(rbf)`` pipelines as plain arrays in an
    uncompressed ``.npz``, read with ``np.load(allow_pickle=False)``: loading runs no code from
    storage, and scoring is one vectorised pass (:mod:`scoring.kernels`). Uncompressed because
    load time matters more than blob size. Layout (``m`` models, ``F`` = max features, ``V`` =
    max support vectors; strings are fixed-width unicode, never object arrays)::

        format            <U   ()          "ocsvm-npz"
        format_version    int64 ()         1
        device, sensor    <U   (m,)        model key
        version           int64 (m,)       model key
        n_features        int64 (m,)
        feature_names     <U   (m, F)      "" padded
        scaler_mean       f8   (m, F)      0 padded
        scaler_scale      f8   (m, F)      1 padded
        n_support         int64 (m,)
        support_vectors   f8   (m, V, F)   0 padded (scaled space)
        dual_coef         f8   (m, V)      0 padded, so padding contributes nothing
        intercept         f8   (m,)        OneClassSVM.intercept_
        gamma             f8   (m,)        fitted gamma ("scale" resolved)
        threshold         f8   (m,)        calibrated: score = threshold - decision_function
        calibration       <U   (m,)        JSON of SensorModel.calibration

``"baseline-npz"`` (the default detector, file ``<set_id>.baseline.npz``)
    The state of :class:`scoring.baseline.RobustBaseline` models as plain arrays (range, noise
    floor, hourly profile, likelihood parameters; see :mod:`scoring.baseline`), read with
    ``allow_pickle=False``. Its scores are already graded in [0, 1].

``"skops"`` (generic, file ``<set_id>.skops.zip``)
    Any scikit-learn estimator. A zip holding ``manifest.json`` (keys, features, thresholds,
    calibration, entry names) and one ``models/<i>.skops`` entry per model. One entry per model
    rather than one skops file of a dict because a chunk needs a few hundred of the set's
    thousands of models: entries are loaded lazily, and a corrupt or untrusted entry fails only
    its own sensor. Every entry is checked with ``skops.io.get_untrusted_types`` against
    :func:`check_trusted_types` (scikit-learn/numpy/scipy classes only) and then loaded with
    that explicit ``trusted`` list: a blob container is not a trusted code source, so plain
    pickle/joblib is never read.
"""

from __future__ import annotations

import json
import os
import re
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoring.kernels import OcsvmArrays, PreparedOcsvm, ocsvm_decision_function

FORMAT_NPZ = "ocsvm-npz"
FORMAT_SKOPS = "skops"
FORMAT_BASELINE = "baseline-npz"
FORMAT_EXTENSIONS: dict[str, str] = {
    FORMAT_NPZ: ".npz",
    FORMAT_SKOPS: ".skops.zip",
    FORMAT_BASELINE: ".baseline.npz",
}
NPZ_FORMAT_VERSION = 1
BASELINE_FORMAT_VERSION = 1
SKOPS_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

SCORE_DECISION = "decision_function"
SCORE_PREDICT = "predict"

TRUSTED_MODULE_ROOTS: tuple[str, ...] = ("sklearn", "numpy", "scipy")
"""Top-level packages whose *classes* a skops entry may contain (functions are never trusted:
a stored function reference is how a model file would smuggle in behaviour)."""

_KEY_SEPARATOR = "\x1f"  # ASCII unit separator: cannot appear in a sane device or sensor name


class ModelSetError(ValueError):
    """A model set file cannot be read or is inconsistent."""


class UntrustedModelError(ModelSetError):
    """A skops entry contains types that are not on the allow-list."""


@dataclass
class SensorModel:
    """A fitted model for one device/sensor and version, plus its calibration.

    Attributes
    ----------
    device, sensor : str
        Model key (with `version`).
    version : int
        Model version (the registry's; a chunk row names the version to use).
    features : tuple of str
        Feature names, in the order of the estimator's input columns.
    estimator : object
        Fitted estimator with ``decision_function`` or ``predict``.
    threshold : float
        Calibrated threshold: ``score = threshold - decision_function(x)``. Unused (0.0) for
        predict-only estimators.
    calibration : dict
        JSON-serialisable facts about fitting: ``n_samples``, ``train_flag_rate``,
        ``threshold``, ``decision_quantiles``, ...
    """

    device: str
    sensor: str
    version: int
    features: tuple[str, ...]
    estimator: Any
    threshold: float
    calibration: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, int]:
        """``(device, sensor, version)``."""
        return (self.device, self.sensor, self.version)

    @property
    def score_kind(self) -> str:
        """``"decision_function"`` or ``"predict"`` (see :func:`anomaly_scores`)."""
        return score_kind(self.estimator)

    def anomaly_score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score of each row of `X` (n_samples, n_features): > 0 means anomaly."""
        return anomaly_scores(self.estimator, self.threshold, np.asarray(X, dtype=np.float64))


def score_kind(estimator: Any) -> str:
    """How an estimator is scored: by ``decision_function`` when it has one, else ``predict``."""
    return SCORE_DECISION if hasattr(estimator, "decision_function") else SCORE_PREDICT


def anomaly_scores(estimator: Any, threshold: float, X: np.ndarray) -> np.ndarray:
    """Anomaly scores of one estimator: higher is more anomalous, ``> 0`` is an anomaly.

    With ``decision_function`` (positive = normal, scikit-learn's outlier convention):
    ``score = threshold - decision_function(X)``. Predict-only estimators follow
    scikit-learn's outlier labels: ``predict == -1`` (outlier) gives ``1.0``, anything else
    ``-1.0``.
    """
    if hasattr(estimator, "decision_function"):
        decision = np.asarray(estimator.decision_function(X), dtype=np.float64).reshape(-1)
        return threshold - decision
    labels = np.asarray(estimator.predict(X)).reshape(-1)
    return np.where(labels == -1, 1.0, -1.0)


def margin_unit(calibration: dict | None) -> float:
    """The unit of a margin model's graded score: the distance between its median training
    decision value and its threshold (1.0 when the calibration does not say)."""
    calibration = calibration or {}
    median = (calibration.get("decision_quantiles") or {}).get("0.5")
    threshold = calibration.get("threshold")
    if median is None or threshold is None:
        return 1.0
    unit = abs(float(median) - float(threshold))
    return unit if np.isfinite(unit) and unit > 0 else 1.0


def graded_from_margin(margin: np.ndarray, unit: float | np.ndarray) -> np.ndarray:
    """``0.5 + 0.5 * tanh(margin / unit)``: a margin (> 0 anomalous) as a score in [0, 1]."""
    return 0.5 + 0.5 * np.tanh(np.asarray(margin, dtype=np.float64) / unit)


def model_set_filename(set_id: str, format: str) -> str:
    """File name of a model set: ``<set_id>.npz`` or ``<set_id>.skops.zip``."""
    try:
        return f"{set_id}{FORMAT_EXTENSIONS[format]}"
    except KeyError:
        raise ValueError(f"unknown model set format {format!r}") from None


# --------------------------------------------------------------------------- trust checks


_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
# Module path components that are never a place for a model's class, and whose import runs
# code that is not a library's definitions: a package's command line (``__main__``, e.g.
# ``numpy.f2py.__main__`` runs f2py and raises SystemExit), build and code-generation tools,
# test suites and their helpers (any component with "test" in it: tests, testing, _testing,
# _testutils, conftest is listed apart).
_REFUSED_COMPONENTS = frozenset({"f2py", "distutils", "conftest", "setup"})


def _name_refusal(type_name: str) -> str | None:
    """Why ``type_name`` cannot be on the allow-list, judged from the string alone (None: it
    may be checked further). Nothing is imported."""
    if not _TYPE_NAME.fullmatch(type_name):
        return "not a dotted Python name"
    parts = type_name.split(".")
    if parts[0] not in TRUSTED_MODULE_ROOTS:
        return "outside the allowed packages"
    for part in parts:
        if part.startswith("__") and part.endswith("__"):
            return f"names {part}"
        if part in _REFUSED_COMPONENTS or "test" in part.lower():
            return f"inside {part}"
    return None


def _resolve(type_name: str) -> Any:
    """The object named ``package.module.Qualname``; call only for names that passed
    :func:`_name_refusal` (so only library modules of trusted packages are imported)."""
    import importlib.util

    parts = type_name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        module = sys.modules.get(module_name)
        if module is None:
            try:
                # find_spec imports the parent packages only: a name that is not a module
                # is not imported as one.
                if importlib.util.find_spec(module_name) is None:
                    continue
            except (ImportError, ValueError, AttributeError):
                continue
            module = importlib.import_module(module_name)
        obj = module
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(type_name)


def check_trusted_types(
    untrusted: Iterable[str], *, extra_trusted: Iterable[str] = ()
) -> list[str]:
    """Return `untrusted` if every type is allow-listed, else raise :class:`UntrustedModelError`.

    A type is allowed when it is named in `extra_trusted`, or when its name passes the checks
    on the string (a dotted name under one of :data:`TRUSTED_MODULE_ROOTS`, no dunder
    component such as ``__main__``, not inside a build tool or test suite) and it then resolves
    to a class of those packages. The string checks come first and nothing is imported for a
    name that fails them, so a model file cannot make the check itself import (and run) a
    module of its choosing; any failure while resolving, whatever its type, rejects the name.
    """
    extra = set(extra_trusted)
    names = [str(name) for name in untrusted]
    rejected = []
    for name in names:
        if name in extra:
            continue
        if _name_refusal(name) is None:
            try:
                obj = _resolve(name)
                module = getattr(obj, "__module__", "") or ""
                if (
                    isinstance(obj, type)
                    and not issubclass(obj, BaseException)
                    and module.split(".", 1)[0] in TRUSTED_MODULE_ROOTS
                ):
                    continue
            except Exception:  # noqa: BLE001 - a name that does not resolve is rejected
                pass
        rejected.append(name)
    if rejected:
        raise UntrustedModelError(
            "refusing to load model: it contains types outside the allow-list "
            f"(classes from {', '.join(TRUSTED_MODULE_ROOTS)}): "
            f"{', '.join(sorted(n[:200] for n in rejected))}"
        )
    return names


# --------------------------------------------------------------------------- writing


def _check_keys(models: Sequence[SensorModel]) -> None:
    seen = set()
    for model in models:
        if _KEY_SEPARATOR in model.device or _KEY_SEPARATOR in model.sensor:
            raise ValueError(f"device/sensor names must not contain \\x1f: {model.key!r}")
        if model.key in seen:
            raise ValueError(f"duplicate model key in one model set: {model.key!r}")
        seen.add(model.key)


def _atomic_target(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed ``.npz`` aside, then rename it into place."""
    path = Path(path)
    tmp = _atomic_target(path)
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)


def write_npz_model_set(path: str | os.PathLike, models: Sequence[SensorModel]) -> None:
    """Write default-shaped pipelines (``steps[0]`` scaler, ``steps[-1]`` RBF one-class SVM)
    as an ``"ocsvm-npz"`` model set. Callers check the shape (``modeling.is_fast_path_model``).
    """
    _check_keys(models)
    m = len(models)
    params = [_ocsvm_parameters(model.estimator) for model in models]
    n_features = np.array([len(model.features) for model in models], dtype=np.int64)
    for model, p in zip(models, params, strict=True):
        if p["support_vectors"].shape[1] != len(model.features):
            raise ValueError(
                f"model {model.key!r} was fitted on {p['support_vectors'].shape[1]} features "
                f"but records {len(model.features)} feature names"
            )
    max_f = int(n_features.max(initial=1))
    n_support = np.array([p["support_vectors"].shape[0] for p in params], dtype=np.int64)
    max_sv = int(n_support.max(initial=1))
    feature_names = np.full(
        (m, max_f), "", dtype=_unicode_dtype([f for model in models for f in model.features])
    )
    scaler_mean = np.zeros((m, max_f))
    scaler_scale = np.ones((m, max_f))
    support_vectors = np.zeros((m, max_sv, max_f))
    dual_coef = np.zeros((m, max_sv))
    for i, (model, p) in enumerate(zip(models, params, strict=True)):
        f, v = int(n_features[i]), int(n_support[i])
        feature_names[i, :f] = model.features
        scaler_mean[i, :f] = p["mean"]
        scaler_scale[i, :f] = p["scale"]
        support_vectors[i, :v, :f] = p["support_vectors"]
        dual_coef[i, :v] = p["dual_coef"]
    arrays = {
        "format": np.array(FORMAT_NPZ),
        "format_version": np.array(NPZ_FORMAT_VERSION, dtype=np.int64),
        "device": _unicode([model.device for model in models]),
        "sensor": _unicode([model.sensor for model in models]),
        "version": np.array([model.version for model in models], dtype=np.int64),
        "n_features": n_features,
        "feature_names": feature_names,
        "scaler_mean": scaler_mean,
        "scaler_scale": scaler_scale,
        "n_support": n_support,
        "support_vectors": support_vectors,
        "dual_coef": dual_coef,
        "intercept": np.array([p["intercept"] for p in params], dtype=np.float64),
        "gamma": np.array([p["gamma"] for p in params], dtype=np.float64),
        "threshold": np.array([model.threshold for model in models], dtype=np.float64),
        "calibration": _unicode([json.dumps(model.calibration) for model in models]),
    }
    _save_npz_atomic(path, arrays)


def write_baseline_model_set(path: str | os.PathLike, models: Sequence[SensorModel]) -> None:
    """Write :class:`scoring.baseline.RobustBaseline` models as a ``"baseline-npz"`` set."""
    from scoring.baseline import FEATURES, PARAM_FIELDS, stack_params

    _check_keys(models)
    for model in models:
        if tuple(model.features) != FEATURES:
            raise ValueError(f"model {model.key!r}: baseline models use features {FEATURES}")
    params = stack_params([model.estimator.params_ for model in models])
    arrays = {
        "format": np.array(FORMAT_BASELINE),
        "format_version": np.array(BASELINE_FORMAT_VERSION, dtype=np.int64),
        "device": _unicode([model.device for model in models]),
        "sensor": _unicode([model.sensor for model in models]),
        "version": np.array([model.version for model in models], dtype=np.int64),
        "threshold": np.array([model.threshold for model in models], dtype=np.float64),
        "calibration": _unicode([json.dumps(model.calibration) for model in models]),
        **{f"param_{name}": getattr(params, name) for name in PARAM_FIELDS},
    }
    _save_npz_atomic(path, arrays)


def _unicode_dtype(values: Sequence[str]) -> np.dtype:
    return np.dtype(f"<U{max((len(v) for v in values), default=1) or 1}")


def _unicode(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=_unicode_dtype(values))


def _ocsvm_parameters(estimator: Any) -> dict[str, Any]:
    """Plain-array parameters of a fitted scaler + RBF one-class SVM pipeline (or packed one)."""
    if isinstance(estimator, PackedOneClassSVM):
        return estimator.parameters()
    scaler, svm = estimator.steps[0][1], estimator.steps[-1][1]
    n_features = svm.support_vectors_.shape[1]
    mean = scaler.mean_ if scaler.with_mean else np.zeros(n_features)
    scale = scaler.scale_ if scaler.with_std else np.ones(n_features)
    return {
        "mean": np.asarray(mean, dtype=np.float64),
        "scale": np.asarray(scale, dtype=np.float64),
        "support_vectors": np.asarray(svm.support_vectors_, dtype=np.float64),
        "dual_coef": np.asarray(svm.dual_coef_, dtype=np.float64).reshape(-1),
        "intercept": float(np.asarray(svm.intercept_).reshape(-1)[0]),
        "gamma": float(svm._gamma),
    }


def write_skops_model_set(path: str | os.PathLike, models: Sequence[SensorModel]) -> None:
    """Write any scikit-learn estimators as a ``"skops"`` model set (zip of manifest + entries)."""
    import skops.io as sio  # only the generic format needs skops (and its ~1 s import)

    _check_keys(models)
    path = Path(path)
    tmp = _atomic_target(path)
    manifest = {"format": FORMAT_SKOPS, "format_version": SKOPS_FORMAT_VERSION, "models": []}
    # Entries are skops files, themselves compressed zips: store them without recompressing.
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for i, model in enumerate(models):
            entry = f"models/{i:06d}.skops"
            archive.writestr(entry, sio.dumps(model.estimator))
            manifest["models"].append(
                {
                    "device": model.device,
                    "sensor": model.sensor,
                    "version": int(model.version),
                    "features": list(model.features),
                    "threshold": float(model.threshold),
                    "score_kind": score_kind(model.estimator),
                    "calibration": model.calibration,
                    "entry": entry,
                }
            )
        archive.writestr(MANIFEST_NAME, json.dumps(manifest), compress_type=zipfile.ZIP_DEFLATED)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- reading


class PackedOneClassSVM:
    """One model of an ``"ocsvm-npz"`` set, with the pipeline's ``decision_function``.

    Lets a loaded fast-path model be used like the scikit-learn pipeline it came from
    (one interface whatever the format) without rebuilding libsvm state.
    """

    def __init__(self, arrays: OcsvmArrays, index: int, n_features: int):
        v = int(arrays.n_support[index])
        self._arrays = OcsvmArrays(
            scaler_mean=arrays.scaler_mean[index : index + 1, :n_features],
            scaler_scale=arrays.scaler_scale[index : index + 1, :n_features],
            support_vectors=arrays.support_vectors[index : index + 1, :v, :n_features],
            dual_coef=arrays.dual_coef[index : index + 1, :v],
            n_support=arrays.n_support[index : index + 1],
            intercept=arrays.intercept[index : index + 1],
            gamma=arrays.gamma[index : index + 1],
        )
        self._prepared: PreparedOcsvm | None = None  # on first use: building sets stays cheap
        self.n_features_in_ = n_features

    @classmethod
    def from_parameters(
        cls,
        mean: np.ndarray,
        scale: np.ndarray,
        support_vectors: np.ndarray,
        dual_coef: np.ndarray,
        intercept: float,
        gamma: float,
    ) -> PackedOneClassSVM:
        """Build one from plain parameters (scaled-space support vectors, as in the npz)."""
        support_vectors = np.asarray(support_vectors, dtype=np.float64)
        arrays = OcsvmArrays(
            scaler_mean=np.asarray(mean, dtype=np.float64)[None, :],
            scaler_scale=np.asarray(scale, dtype=np.float64)[None, :],
            support_vectors=support_vectors[None, :, :],
            dual_coef=np.asarray(dual_coef, dtype=np.float64).reshape(1, -1),
            n_support=np.array([support_vectors.shape[0]], dtype=np.int64),
            intercept=np.array([intercept], dtype=np.float64),
            gamma=np.array([gamma], dtype=np.float64),
        )
        return cls(arrays, 0, support_vectors.shape[1])

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Decision function of each row of `X` (n_samples, n_features)."""
        if self._prepared is None:
            self._prepared = self._arrays.prepared()
        X = np.asarray(X, dtype=np.float64)
        return ocsvm_decision_function(X[None, :, :], self._prepared)[0]

    def parameters(self) -> dict[str, Any]:
        """The plain arrays (same keys as written to the npz, for one model)."""
        a = self._arrays
        return {
            "mean": a.scaler_mean[0],
            "scale": a.scaler_scale[0],
            "support_vectors": a.support_vectors[0],
            "dual_coef": a.dual_coef[0],
            "intercept": float(a.intercept[0]),
            "gamma": float(a.gamma[0]),
        }


@dataclass
class SensorScores:
    """Result of scoring a group of sensors with one model set.

    Attributes
    ----------
    scores : ndarray of shape (n_sensors, n_buckets)
        Anomaly scores (rows of failed sensors are undefined).
    failures : dict of int to str
        Position (in the request) of each sensor that could not be scored, and why.
    """

    scores: np.ndarray
    failures: dict[int, str]


class ModelSet:
    """Models of one model set file: their keys, features and bulk scoring.

    Attributes
    ----------
    path : pathlib.Path
    format : str
    devices, sensors : ndarray of str, shape (n_models,)
    versions : ndarray of int64, shape (n_models,)
    feature_sets : list of tuple of str
        Distinct feature tuples used in the set.
    feature_set_ids : ndarray of int64, shape (n_models,)
        Index into `feature_sets` of each model's features.
    """

    format: str
    graded = False
    """Whether :meth:`score` returns graded scores in [0, 1] (else margins: > 0 is anomalous,
    which :meth:`graded_scores` maps to [0, 1])."""

    def __init__(
        self,
        path: Path,
        devices: Sequence[str],
        sensors: Sequence[str],
        versions: Sequence[int],
        features: Sequence[tuple[str, ...]],
        thresholds: np.ndarray,
    ):
        self.path = path
        self.devices = np.asarray(devices, dtype=str)
        self.sensors = np.asarray(sensors, dtype=str)
        self.versions = np.asarray(versions, dtype=np.int64)
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.feature_sets: list[tuple[str, ...]] = []
        ids = {}
        for feats in features:
            ids.setdefault(feats, len(ids))
        self.feature_sets = list(ids)
        self.feature_set_ids = np.array([ids[f] for f in features], dtype=np.int64)
        keys = _composite_keys(
            pa.array(self.devices), pa.array(self.sensors), pa.array(self.versions)
        )
        keys = np.asarray(keys.to_numpy(zero_copy_only=False), dtype=str)
        # Sorted once per set, so each chunk's lookup is one vectorised binary search (a hash
        # join such as pyarrow's index_in would rebuild its table on every call).
        self._key_order = np.argsort(keys, kind="stable")
        self._sorted_keys = keys[self._key_order]
        if len(keys) > 1 and np.any(self._sorted_keys[1:] == self._sorted_keys[:-1]):
            raise ModelSetError(f"{path.name}: duplicate (device, sensor, version) keys")

    def __len__(self) -> int:
        return len(self.versions)

    @property
    def keys(self) -> list[tuple[str, str, int]]:
        """``(device, sensor, version)`` of every model, in file order."""
        return list(
            zip(self.devices.tolist(), self.sensors.tolist(), self.versions.tolist(), strict=True)
        )

    def lookup(
        self,
        devices: pa.Array | Sequence[str],
        sensors: pa.Array | Sequence[str],
        versions: pa.Array | Sequence[int],
    ) -> np.ndarray:
        """Index of each (device, sensor, version) in this set, ``-1`` where absent.

        Vectorised (one binary search over the set's sorted keys), so a chunk of thousands of
        sensors costs no per-sensor Python.
        """
        query = _composite_keys(pa.array(devices), pa.array(sensors), pa.array(versions))
        query = np.asarray(query.to_numpy(zero_copy_only=False), dtype=str)
        found = np.full(len(query), -1, dtype=np.int64)
        if not len(query) or not len(self._sorted_keys):
            return found
        position = np.searchsorted(self._sorted_keys, query)
        position = np.minimum(position, len(self._sorted_keys) - 1)
        match = self._sorted_keys[position] == query
        found[match] = self._key_order[position[match]]
        return found

    def calibrations(self) -> list[dict]:
        """Calibration facts of every model, in file order."""
        return [{} for _ in range(len(self))]

    def calibration(self, index: int) -> dict:
        """Calibration facts of model `index` (without parsing the whole set's)."""
        return self.calibrations()[index]

    def graded_scores(self, model_index: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Scores of :meth:`score` as graded scores in [0, 1] (0.5 at the model's threshold).

        Margin models (``score > 0`` is anomalous) have no probability behind their margin, so
        the map is monotone, not a probability: ``0.5 + 0.5 * tanh(margin / unit)`` with the unit
        the distance between the model's median training decision value and its threshold (1
        when unknown). Flags at the default sensitivity 0.5 are exactly the model's own.
        """
        if self.graded:
            return scores
        if not hasattr(self, "_margin_units"):
            self._margin_units = np.array([margin_unit(c) for c in self.calibrations()])
        unit = self._margin_units[np.asarray(model_index, dtype=np.int64)][:, None]
        return graded_from_margin(scores, unit)

    def features_of(self, index: int) -> tuple[str, ...]:
        """Feature names of model `index`."""
        return self.feature_sets[int(self.feature_set_ids[index])]

    def model(self, index: int) -> SensorModel:
        """Model `index` as a :class:`SensorModel`."""
        raise NotImplementedError

    def score(self, model_index: np.ndarray, X: np.ndarray, n_buckets: np.ndarray) -> SensorScores:
        """Anomaly scores of many sensors, each with its own model.

        Parameters
        ----------
        model_index : ndarray of int, shape (n_sensors,)
            Model of each sensor; all must share one feature tuple (one `feature_set_ids`).
        X : ndarray of shape (n_sensors, n_buckets, n_features)
            Finite features in the order of those models' feature names; rows past a
            sensor's `n_buckets` are padding (copies of its real rows).
        n_buckets : ndarray of int, shape (n_sensors,)
            Real bucket count of each sensor.
        """
        raise NotImplementedError


def _composite_keys(devices: pa.Array, sensors: pa.Array, versions: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(
        devices.cast(pa.string()),
        sensors.cast(pa.string()),
        versions.cast(pa.int64()).cast(pa.string()),
        _KEY_SEPARATOR,
    )


class NpzModelSet(ModelSet):
    """An ``"ocsvm-npz"`` model set: every model scored in one vectorised pass."""

    format = FORMAT_NPZ

    def __init__(self, path: Path, arrays: dict[str, np.ndarray]):
        n_features = arrays["n_features"]
        names = arrays["feature_names"]
        features = [tuple(names[i, : n_features[i]].tolist()) for i in range(len(n_features))]
        super().__init__(
            path,
            arrays["device"],
            arrays["sensor"],
            arrays["version"],
            features,
            arrays["threshold"],
        )
        self.n_features = n_features
        self.calibration_json = arrays["calibration"]
        self.arrays = OcsvmArrays(
            scaler_mean=arrays["scaler_mean"],
            scaler_scale=arrays["scaler_scale"],
            support_vectors=arrays["support_vectors"],
            dual_coef=arrays["dual_coef"],
            n_support=arrays["n_support"],
            intercept=arrays["intercept"],
            gamma=arrays["gamma"],
        )
        # A model whose recorded feature names disagree with its arrays is unusable; only its
        # own sensors fail (reported by `score`), not the set.
        self.invalid: dict[int, str] = {}
        bad_names = np.array(
            [len(f) != n for f, n in zip(features, n_features, strict=True)], dtype=bool
        )
        for i in np.flatnonzero(bad_names | (n_features > names.shape[1]) | (n_features < 1)):
            self.invalid[int(i)] = (
                f"feature count mismatch: model has {int(n_features[i])} features but "
                f"{len(features[i])} feature names"
            )
        self._prepared: dict[int, PreparedOcsvm] = {}

    def _prepared_for(self, n_features: int) -> PreparedOcsvm:
        # Sliced to the group's feature count so padding features never enter a distance.
        if n_features not in self._prepared:
            a = self.arrays
            self._prepared[n_features] = OcsvmArrays(
                scaler_mean=a.scaler_mean[:, :n_features],
                scaler_scale=a.scaler_scale[:, :n_features],
                support_vectors=a.support_vectors[:, :, :n_features],
                dual_coef=a.dual_coef,
                n_support=a.n_support,
                intercept=a.intercept,
                gamma=a.gamma,
            ).prepared()
        return self._prepared[n_features]

    def calibrations(self) -> list[dict]:
        return [json.loads(str(text)) for text in self.calibration_json]

    def calibration(self, index: int) -> dict:
        return json.loads(str(self.calibration_json[index]))

    def decision_function(self, model_index: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Raw ``decision_function`` (n_sensors, n_buckets) of each sensor's model."""
        model_index = np.asarray(model_index, dtype=np.int64)
        return ocsvm_decision_function(X, self._prepared_for(X.shape[2]), model_index)

    def score(self, model_index: np.ndarray, X: np.ndarray, n_buckets: np.ndarray) -> SensorScores:
        model_index = np.asarray(model_index, dtype=np.int64)
        failures = {}
        if self.invalid:
            for pos in np.flatnonzero(np.isin(model_index, list(self.invalid))):
                failures[int(pos)] = self.invalid[int(model_index[pos])]
        wrong_width = np.flatnonzero(self.n_features[model_index] != X.shape[2])
        for pos in wrong_width:
            failures[int(pos)] = (
                f"feature count mismatch: model has {int(self.n_features[model_index[pos]])} "
                f"features, data has {X.shape[2]}"
            )
        if failures:
            # Evaluate the healthy sensors only; failed rows stay NaN.
            scores = np.full(X.shape[:2], np.nan)
            ok = np.ones(len(model_index), dtype=bool)
            ok[list(failures)] = False
            if ok.any():
                scores[ok] = self.thresholds[model_index[ok]][:, None] - self.decision_function(
                    model_index[ok], X[ok]
                )
            return SensorScores(scores, failures)
        decision = self.decision_function(model_index, X)
        # In place: score = threshold - decision, without another (s, b) temporary.
        np.subtract(self.thresholds[model_index][:, None], decision, out=decision)
        return SensorScores(decision, failures)

    def model(self, index: int) -> SensorModel:
        return SensorModel(
            device=str(self.devices[index]),
            sensor=str(self.sensors[index]),
            version=int(self.versions[index]),
            features=self.features_of(index),
            estimator=PackedOneClassSVM(self.arrays, index, int(self.n_features[index])),
            threshold=float(self.thresholds[index]),
            calibration=json.loads(str(self.calibration_json[index])),
        )


class BaselineModelSet(ModelSet):
    """A ``"baseline-npz"`` model set: graded scores of every sensor in one vectorised pass."""

    format = FORMAT_BASELINE
    graded = True

    def __init__(self, path: Path, arrays: dict[str, np.ndarray]):
        from scoring.baseline import FEATURES, PARAM_FIELDS, BaselineParams

        m = len(arrays["version"])
        super().__init__(
            path,
            arrays["device"],
            arrays["sensor"],
            arrays["version"],
            [FEATURES] * m,
            arrays["threshold"],
        )
        self.calibration_json = arrays["calibration"]
        self.params = BaselineParams(
            *(np.asarray(arrays[f"param_{name}"]) for name in PARAM_FIELDS)
        )
        if self.params.profile.ndim != 2 or any(
            len(getattr(self.params, name)) != m for name in PARAM_FIELDS
        ):
            raise ModelSetError(f"{path.name}: parameter arrays do not match {m} models")

    def calibrations(self) -> list[dict]:
        return [json.loads(str(text)) for text in self.calibration_json]

    def calibration(self, index: int) -> dict:
        return json.loads(str(self.calibration_json[index]))

    def score(self, model_index: np.ndarray, X: np.ndarray, n_buckets: np.ndarray) -> SensorScores:
        from scoring.baseline import score

        model_index = np.asarray(model_index, dtype=np.int64)
        return SensorScores(score(X, self.params.take(model_index)), {})

    def model(self, index: int) -> SensorModel:
        from scoring.baseline import RobustBaseline

        estimator = RobustBaseline()
        estimator.params_ = self.params.take(np.array([index]))
        return SensorModel(
            device=str(self.devices[index]),
            sensor=str(self.sensors[index]),
            version=int(self.versions[index]),
            features=self.features_of(index),
            estimator=estimator,
            threshold=float(self.thresholds[index]),
            calibration=json.loads(str(self.calibration_json[index])),
        )


class SkopsModelSet(ModelSet):
    """A ``"skops"`` model set: entries are loaded lazily and scored one model at a time."""

    format = FORMAT_SKOPS

    def __init__(self, path: Path, manifest: dict, *, extra_trusted: Iterable[str] = ()):
        entries = manifest["models"]
        super().__init__(
            path,
            [e["device"] for e in entries],
            [e["sensor"] for e in entries],
            [e["version"] for e in entries],
            [tuple(e["features"]) for e in entries],
            np.array([e["threshold"] for e in entries], dtype=np.float64),
        )
        self._entries = entries
        self._extra_trusted = tuple(extra_trusted)
        self._estimators: dict[int, Any] = {}

    def estimator(self, index: int) -> Any:
        """Load (once) and return the estimator of model `index`, after the trust check."""
        if index not in self._estimators:
            import skops.io as sio

            with zipfile.ZipFile(self.path) as archive:
                data = archive.read(self._entries[index]["entry"])
            trusted = check_trusted_types(
                sio.get_untrusted_types(data=data), extra_trusted=self._extra_trusted
            )
            self._estimators[index] = sio.loads(data, trusted=trusted)
        return self._estimators[index]

    def calibrations(self) -> list[dict]:
        return [entry.get("calibration") or {} for entry in self._entries]

    def calibration(self, index: int) -> dict:
        return self._entries[index].get("calibration") or {}

    def model(self, index: int) -> SensorModel:
        entry = self._entries[index]
        return SensorModel(
            device=entry["device"],
            sensor=entry["sensor"],
            version=int(entry["version"]),
            features=tuple(entry["features"]),
            estimator=self.estimator(index),
            threshold=float(entry["threshold"]),
            calibration=entry.get("calibration", {}),
        )

    def score(self, model_index: np.ndarray, X: np.ndarray, n_buckets: np.ndarray) -> SensorScores:
        # The generic path: one estimator call per sensor. Any failure (untrusted or corrupt
        # entry, wrong feature count, estimator error) fails that sensor only.
        scores = np.full(X.shape[:2], np.nan)
        failures = {}
        for pos, (index, count) in enumerate(
            zip(model_index.tolist(), n_buckets.tolist(), strict=True)
        ):
            try:
                estimator = self.estimator(index)
                expected = getattr(estimator, "n_features_in_", X.shape[2])
                if expected != X.shape[2]:
                    raise ModelSetError(
                        f"feature count mismatch: estimator expects {expected} features, "
                        f"model records {X.shape[2]} ({', '.join(self.features_of(index))})"
                    )
                scores[pos, :count] = anomaly_scores(
                    estimator, float(self.thresholds[index]), X[pos, :count]
                )
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - any model failure is data, not a crash
                # SystemExit, GeneratorExit included: code reached through a stored model
                # must not end the scoring step.
                failures[pos] = _describe(exc)
        return SensorScores(scores, failures)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ModelSetError) else f"{type(exc).__name__}: {text}"


def load_model_set(path: str | os.PathLike, *, extra_trusted: Iterable[str] = ()) -> ModelSet:
    """Load a model set file of either format (detected from its content).

    Parameters
    ----------
    path : path-like
        A ``.npz`` or ``.skops.zip`` model set.
    extra_trusted : iterable of str
        Additional fully qualified type names a skops entry may contain (for custom
        estimators whose code ships with the scoring step).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ModelSetError
        The file is not a readable model set.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model set file not found: {path.name}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            manifest = json.loads(archive.read(MANIFEST_NAME)) if MANIFEST_NAME in names else None
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise ModelSetError(f"{path.name}: not a readable model set ({exc})") from exc
    if manifest is not None:
        if manifest.get("format") != FORMAT_SKOPS:
            raise ModelSetError(f"{path.name}: manifest format {manifest.get('format')!r}")
        try:
            return SkopsModelSet(path, manifest, extra_trusted=extra_trusted)
        except (KeyError, TypeError) as exc:
            raise ModelSetError(f"{path.name}: malformed manifest ({exc!r})") from exc
    if "format.npy" in names:
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except Exception as exc:  # noqa: BLE001 - zlib/format errors come in many types
            raise ModelSetError(f"{path.name}: corrupt npz model set ({exc})") from exc
        if str(arrays.get("format")) == FORMAT_BASELINE:
            if int(arrays.get("format_version", -1)) != BASELINE_FORMAT_VERSION:
                raise ModelSetError(
                    f"{path.name}: baseline format_version {arrays.get('format_version')!r}, "
                    f"this scorer reads {BASELINE_FORMAT_VERSION}"
                )
            try:
                return BaselineModelSet(path, arrays)
            except (KeyError, IndexError, ValueError) as exc:
                raise ModelSetError(f"{path.name}: malformed baseline model set ({exc!r})") from exc
        if str(arrays.get("format")) != FORMAT_NPZ:
            raise ModelSetError(f"{path.name}: npz format {arrays.get('format')!r}")
        if int(arrays.get("format_version", -1)) != NPZ_FORMAT_VERSION:
            raise ModelSetError(
                f"{path.name}: npz format_version {arrays.get('format_version')!r}, this scorer "
                f"reads {NPZ_FORMAT_VERSION}"
            )
        try:
            return NpzModelSet(path, arrays)
        except (KeyError, IndexError, ValueError) as exc:
            raise ModelSetError(f"{path.name}: malformed npz model set ({exc!r})") from exc
    raise ModelSetError(f"{path.name}: neither an ocsvm-npz, baseline-npz nor a skops model set")
