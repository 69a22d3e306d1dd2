"""Fitting per-sensor models, calibrating their thresholds and writing model sets.

This is the training side (it imports scikit-learn); scoring needs only :mod:`scoring.model_sets`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from scoring.explain import training_statistics
from scoring.features import DEFAULT_FEATURES
from scoring.model_sets import (
    FORMAT_BASELINE,
    FORMAT_NPZ,
    FORMAT_SKOPS,
    SCORE_DECISION,
    PackedOneClassSVM,
    SensorModel,
    model_set_filename,
    score_kind,
    write_baseline_model_set,
    write_npz_model_set,
    write_skops_model_set,
)

__all__ = [
    "DEFAULT_GAMMA",
    "DEFAULT_NU",
    "MAX_FIT_SAMPLES",
    "MIN_TRAINING_BUCKETS",
    "SensorModel",
    "default_estimator",
    "fit_sensor_model",
    "is_fast_path_model",
    "model_set_filename",
    "model_set_format",
    "write_model_set",
]

DEFAULT_NU = 0.05
DEFAULT_GAMMA = 0.02
MIN_TRAINING_BUCKETS = 10
"""Fewer usable buckets than this cannot support a calibrated threshold."""
MAX_FIT_SAMPLES = 1440
"""Fit on at most a day of 1-minute buckets (the SVM fit is quadratic and its support-vector
count, hence scoring cost, grows with ``nu * n``); the threshold is still calibrated on all."""
DECISION_QUANTILES = (0.001, 0.005, 0.01, 0.05, 0.25, 0.5)
_THRESHOLD_TOLERANCE = 1e-9


def default_estimator() -> Pipeline:
    """The default per-sensor model: ``StandardScaler`` then an RBF ``OneClassSVM``.

    ``nu=0.05, gamma=0.02`` (on standardized features). Why:

    * The reference's ``nu=0.0001, gamma=0.01`` put the raw SVM boundary through the extreme
      training points and flagged 100 % of some sensors' readings. Here the boundary is not the
      alarm line anyway: :func:`fit_sensor_model` calibrates a threshold on the decision values
      of the training buckets, so ``nu`` and ``gamma`` only shape the decision function.
    * ``gamma`` sets how local that shape is. Measured on the reference-like data (uniform
      readings, 12 per 1-minute bucket, 240 training buckets), ``gamma="scale"`` (0.25 for four
      standardized features) overfits: 9-14 % of held-out normal buckets fall below the
      threshold calibrated at 0.5 %. ``gamma=0.02`` gives ~1.3 %, while still flagging spikes,
      stuck sensors and level shifts of 20 % of the range; smaller values gain little.
    * ``nu`` bounds the share of training points treated as outliers and is a lower bound on the
      share of support vectors. 0.05 keeps the fit robust to a few anomalies in the training
      window; with :data:`MAX_FIT_SAMPLES` it caps the support vectors at ~75 per model (~14 for
      4 hours of 1-minute buckets), which keeps bulk scoring fast.
    """
    return Pipeline(
        [
            ("scaler", StandardScaler()),
            ("ocsvm", OneClassSVM(kernel="rbf", nu=DEFAULT_NU, gamma=DEFAULT_GAMMA)),
        ]
    )


def _training_matrix(frame_or_X: pd.DataFrame | np.ndarray, features: Sequence[str]) -> np.ndarray:
    if isinstance(frame_or_X, pd.DataFrame):
        missing = [f for f in features if f not in frame_or_X.columns]
        if missing:
            raise ValueError(f"training frame lacks feature columns: {missing}")
        X = frame_or_X[list(features)].to_numpy(dtype=np.float64)
    else:
        X = np.asarray(frame_or_X, dtype=np.float64)
        if X.ndim == 1 and len(features) == 1:
            X = X[:, None]
        if X.ndim != 2 or X.shape[1] != len(features):
            raise ValueError(
                f"training matrix has shape {X.shape}; expected (n_buckets, {len(features)}) "
                f"for features {tuple(features)}"
            )
    return X


CALIBRATION_FOLDS = 5
TAIL_SHARE = 0.1
"""The lowest share of held-out decision values the exponential tail is fitted to."""


def _decision_scale(estimator: Any) -> float:
    """The scale of an estimator's decision values, so different fits compare.

    A one-class SVM's decision function is a sum of ``dual_coef`` kernel terms whose total
    grows with the number of training samples (``nu * n`` in libsvm's convention), so models
    fitted on folds and on all data live on different scales: divide by that total. Other
    estimators' decision values are taken as comparable as they are.
    """
    svm = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    dual = getattr(svm, "dual_coef_", None)
    if dual is None:
        return 1.0
    total = float(np.sum(dual))
    return total if total > 0 else 1.0


def _out_of_fold_decisions(estimator: Any, X: np.ndarray, random_state: int) -> np.ndarray:
    """Decision values of each training bucket from a model that did not see it, on the
    scale of :func:`_decision_scale` (divided by it).

    In-sample values are biased exactly where calibration looks: the buckets at the edge of
    the data become support vectors and score their own kernel term, so a threshold set on
    them flags two to three times the target on new data. Folds are interleaved in time.
    """
    n = len(X)
    folds = min(CALIBRATION_FOLDS, n // 2)
    if folds < 2:
        return np.asarray(estimator.decision_function(X), dtype=np.float64) / _decision_scale(
            estimator
        )
    out = np.empty(n, dtype=np.float64)
    index = np.arange(n)
    for k in range(folds):
        held = index[k::folds]
        model = clone(estimator)
        if "random_state" in model.get_params():
            model.set_params(random_state=random_state)
        model.fit(np.delete(X, held, axis=0))
        out[held] = np.asarray(model.decision_function(X[held]), dtype=np.float64).reshape(
            -1
        ) / _decision_scale(model)
    return out


def tail_threshold(values: np.ndarray, rate: float, tail_share: float = TAIL_SHARE) -> float:
    """The value below which a share ``rate`` of new decision values is expected to fall.

    With a few hundred training buckets the empirical 0.1% quantile is just the minimum, so the
    lower tail is modelled instead (peaks over threshold): below the ``tail_share`` quantile
    ``q``, the excesses ``q - v`` are taken as exponential with mean ``beta``, which puts the
    ``rate`` quantile at ``q - beta * ln(tail_share / rate)``. Rates at or above ``tail_share``
    use the empirical quantile.
    """
    values = np.asarray(values, dtype=np.float64)
    if rate >= tail_share:
        return float(np.quantile(values, rate))
    q = float(np.quantile(values, tail_share))
    below = values[values < q]
    beta = float(np.mean(q - below)) if len(below) else 0.0
    return q - beta * float(np.log(tail_share / rate))


def fit_sensor_model(
    device: str,
    sensor: str,
    version: int,
    frame_or_X: pd.DataFrame | np.ndarray,
    *,
    features: Sequence[str] = DEFAULT_FEATURES,
    estimator: Any = None,
    target_false_alarm_rate: float = 0.001,
    max_fit_samples: int | None = MAX_FIT_SAMPLES,
    random_state: int = 0,
    flagged: np.ndarray | None = None,
) -> SensorModel:
    """Fit one sensor's model on its training buckets and calibrate its threshold.

    Parameters
    ----------
    device, sensor : str
        The sensor the model is for.
    version : int
        Model version to record.
    frame_or_X : pandas.DataFrame or ndarray of shape (n_buckets, n_features)
        Training buckets: a frame with the `features` columns, or the feature matrix itself.
        Rows with NaN or inf in any feature are dropped.
    features : sequence of str
        Feature names, in column order (default :data:`scoring.features.DEFAULT_FEATURES`).
    estimator : scikit-learn estimator, optional
        Template to clone and fit (anything with ``decision_function`` or ``predict``);
        default :func:`default_estimator`.
    target_false_alarm_rate : float
        Share of training buckets the calibrated threshold may flag.
    max_fit_samples : int or None
        Fit on a random subset of at most this many buckets (calibration still uses all).
    random_state : int
        Seed of that subset.
    flagged : ndarray of bool, shape (n_buckets,), optional
        Buckets an earlier run flagged as anomalous. Graded detectors keep them for their
        sequence and deviation statistics but not for the range they call normal
        (``fit(X, flagged=...)``); other estimators are fitted and calibrated without them.

    Returns
    -------
    SensorModel
        With ``threshold`` set to the `target_false_alarm_rate` quantile of the training
        decision values (minus a 1e-9 relative tolerance, so a training bucket that sits
        exactly on the threshold, as every bucket of constant data does, is not flagged), and
        ``calibration`` holding ``n_samples``, ``n_dropped``, ``n_fit_samples``,
        ``target_false_alarm_rate``, ``threshold``, ``train_flag_rate``, ``score_kind``,
        ``decision_quantiles``, the per-feature training statistics of feature-deviation
        explanations (``feature_median``, ``feature_iqr``, ``feature_low``, ``feature_high``;
        :func:`scoring.explain.training_statistics`) and, for SVMs, ``n_support_vectors``.
        For predict-only estimators the threshold is 0.0 and the score is +-1 (see
        :func:`scoring.model_sets.anomaly_scores`).

    Raises
    ------
    ValueError
        Fewer than :data:`MIN_TRAINING_BUCKETS` finite buckets, or a malformed input.
    """
    if not 0.0 < target_false_alarm_rate < 0.5:
        raise ValueError(
            f"target_false_alarm_rate must be in (0, 0.5), got {target_false_alarm_rate}"
        )
    features = tuple(features)
    if not features:
        raise ValueError("features must name at least one column")
    X = _training_matrix(frame_or_X, features)
    finite = np.isfinite(X).all(axis=1)
    n_dropped = int((~finite).sum())
    X = X[finite]
    flagged = (
        np.zeros(len(X), dtype=bool)
        if flagged is None
        else np.asarray(flagged, dtype=bool).reshape(-1)[finite]
    )
    if not getattr(estimator, "graded", False) and flagged.any():
        X, flagged = X[~flagged], flagged[~flagged]
    if len(X) < MIN_TRAINING_BUCKETS:
        raise ValueError(
            f"{device}/{sensor}: only {len(X)} usable training buckets "
            f"({n_dropped} dropped for NaN/inf); at least {MIN_TRAINING_BUCKETS} are needed"
        )
    if getattr(estimator, "graded", False):
        # Graded detectors (scoring.baseline) calibrate themselves: their score is a tail
        # probability of the sensor's own training behaviour, fitted on every bucket in order.
        fitted = clone(estimator)
        fitted.fit(X, flagged=flagged)
        calibration = {
            "n_samples": int(len(X)),
            "n_dropped": n_dropped,
            "n_flagged": int(flagged.sum()),
            "n_fit_samples": int(len(X)),
            "score_kind": "graded",
            "threshold": 0.5,
            **fitted.summary(),
        }
        return SensorModel(
            device=str(device),
            sensor=str(sensor),
            version=int(version),
            features=features,
            estimator=fitted,
            threshold=0.5,
            calibration=calibration,
        )
    X_fit = X
    if max_fit_samples is not None and len(X) > max_fit_samples:
        rng = np.random.default_rng(random_state)
        X_fit = X[np.sort(rng.choice(len(X), size=max_fit_samples, replace=False))]

    fitted = clone(estimator if estimator is not None else default_estimator())
    fitted.fit(X_fit)

    kind = score_kind(fitted)
    calibration: dict[str, Any] = {
        "n_samples": int(len(X)),
        "n_dropped": n_dropped,
        "n_fit_samples": int(len(X_fit)),
        "target_false_alarm_rate": float(target_false_alarm_rate),
        "score_kind": kind,
        # The training distribution per feature, for feature-deviation explanations
        # (scoring.explain): such estimators give no reasons of their own.
        **training_statistics(X),
    }
    if kind == SCORE_DECISION:
        decision = np.asarray(fitted.decision_function(X), dtype=np.float64).reshape(-1)
        held_out = _out_of_fold_decisions(fitted, X, random_state)
        scale = _decision_scale(fitted)
        cut = tail_threshold(held_out, target_false_alarm_rate) * scale
        # Ties at the threshold (constant training data gives one decision value for every
        # bucket) must not be flagged, nor buckets that only differ by rounding.
        tolerance = _THRESHOLD_TOLERANCE * max(1.0, float(np.abs(decision).max()))
        threshold = cut - tolerance
        calibration["decision_quantiles"] = {
            str(q): float(v)
            for q, v in zip(
                DECISION_QUANTILES, np.quantile(decision, DECISION_QUANTILES), strict=True
            )
        }
        calibration["held_out_flag_rate"] = float(np.mean(threshold - held_out * scale > 0))
        calibration["train_flag_rate"] = float(np.mean(threshold - decision > 0))
    else:
        threshold = 0.0
        labels = np.asarray(fitted.predict(X)).reshape(-1)
        calibration["decision_quantiles"] = None
        calibration["train_flag_rate"] = float(np.mean(labels == -1))
    calibration["threshold"] = float(threshold)
    svm = fitted.steps[-1][1] if isinstance(fitted, Pipeline) else fitted
    if hasattr(svm, "support_vectors_"):
        calibration["n_support_vectors"] = int(svm.support_vectors_.shape[0])
    return SensorModel(
        device=str(device),
        sensor=str(sensor),
        version=int(version),
        features=features,
        estimator=fitted,
        threshold=float(threshold),
        calibration=calibration,
    )


def is_fast_path_model(model: SensorModel) -> bool:
    """Whether a model has the default pipeline's shape and can go into an ``"ocsvm-npz"`` set.

    That is: a fitted ``Pipeline`` of exactly ``StandardScaler`` then ``OneClassSVM`` with the
    RBF kernel (any ``nu``/``gamma``), or a model loaded from an npz set.
    """
    est = model.estimator
    if isinstance(est, PackedOneClassSVM):
        return True
    if type(est) is not Pipeline or len(est.steps) != 2:
        return False
    scaler, svm = est.steps[0][1], est.steps[1][1]
    return (
        type(scaler) is StandardScaler
        and type(svm) is OneClassSVM
        and svm.kernel == "rbf"
        and hasattr(svm, "support_vectors_")
        and svm.support_vectors_.shape[1] == len(model.features)
    )


def is_baseline_model(model: SensorModel) -> bool:
    """Whether a model is a :class:`scoring.baseline.RobustBaseline` (``"baseline-npz"``)."""
    from scoring.baseline import RobustBaseline

    return isinstance(model.estimator, RobustBaseline)


def model_set_format(models: Sequence[SensorModel]) -> str:
    """``"baseline-npz"`` if every model is the default detector, ``"ocsvm-npz"`` if every
    model has the reference pipeline's shape, else ``"skops"``."""
    if models and all(map(is_baseline_model, models)):
        return FORMAT_BASELINE
    return FORMAT_NPZ if models and all(map(is_fast_path_model, models)) else FORMAT_SKOPS


def write_model_set(
    path: str | os.PathLike, models: Sequence[SensorModel], *, format: str | None = None
) -> str:
    """Write many models into one model set file (atomically: temp file + rename).

    Parameters
    ----------
    path : path-like
        Target file; name it with :func:`model_set_filename` and :func:`model_set_format`.
    models : sequence of SensorModel
        Models with distinct (device, sensor, version) keys.
    format : {"ocsvm-npz", "skops"}, optional
        Force a format; default :func:`model_set_format`. ``"ocsvm-npz"`` requires every model
        to have the default pipeline's shape.

    Returns
    -------
    str
        The format written.
    """
    models = list(models)
    if not models:
        raise ValueError("a model set needs at least one model")
    chosen = format or model_set_format(models)
    if chosen == FORMAT_NPZ:
        odd = [m.key for m in models if not is_fast_path_model(m)]
        if odd:
            raise ValueError(
                f"ocsvm-npz needs scaler + RBF one-class SVM pipelines; not: {odd[:5]}"
            )
        write_npz_model_set(path, models)
    elif chosen == FORMAT_BASELINE:
        write_baseline_model_set(path, models)
    elif chosen == FORMAT_SKOPS:
        write_skops_model_set(path, models)
    else:
        raise ValueError(f"unknown model set format {chosen!r}")
    return chosen
