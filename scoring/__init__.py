"""Batch scoring of many per-sensor anomaly-detection models: files in, files out.

This package is the scoring step (and the training step) that Azure ML runs from the job's
code snapshot and that the local executor runs in a process pool. It is self-contained: it
imports only numpy, pyarrow (plus scikit-learn, skops and pandas for training and the generic
model format) and never the application's ``shared`` package or any ``azure`` SDK. Its
environment is declared in ``scoring/environment.yml`` / ``scoring/requirements.txt``.

Modules: :mod:`scoring.features` (the feature contract), :mod:`scoring.model_sets` (model set
formats, safe loading, bulk scoring), :mod:`scoring.kernels` (the vectorised one-class SVM),
:mod:`scoring.explain` (why a flagged bucket was flagged), :mod:`scoring.score` (the step and
its CLI), :mod:`scoring.modeling` (fitting, calibration,
writing; imported lazily here because scikit-learn takes a second to import and the scoring
hot path does not need it), :mod:`scoring.train` (the training step and its CLI: training chunks
in, model sets and summaries out) and :mod:`scoring.estimators` (the named estimators).
"""

from __future__ import annotations

from typing import Any

from scoring.features import AGGREGATES, DEFAULT_FEATURES, aggregate_readings
from scoring.model_sets import (
    FORMAT_NPZ,
    FORMAT_SKOPS,
    ModelSet,
    ModelSetError,
    SensorModel,
    UntrustedModelError,
    load_model_set,
    model_set_filename,
)
from scoring.score import ScoreSummary, score_chunks

_MODELING_NAMES = (
    "default_estimator",
    "fit_sensor_model",
    "model_set_format",
    "write_model_set",
)

__all__ = [
    "AGGREGATES",
    "DEFAULT_FEATURES",
    "FORMAT_NPZ",
    "FORMAT_SKOPS",
    "ModelSet",
    "ModelSetError",
    "ScoreSummary",
    "SensorModel",
    "UntrustedModelError",
    "aggregate_readings",
    "load_model_set",
    "model_set_filename",
    "score_chunks",
    *_MODELING_NAMES,
]


def __getattr__(name: str) -> Any:
    # PEP 562 lazy re-export: `from scoring import fit_sensor_model` works, but importing
    # `scoring` (as every scoring worker does) does not pay for scikit-learn.
    if name in _MODELING_NAMES:
        from scoring import modeling

        return getattr(modeling, name)
    raise AttributeError(f"module 'scoring' has no attribute {name!r}")
