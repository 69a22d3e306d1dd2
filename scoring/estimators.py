"""The named estimators training can fit, and the features each is trained on by default.

They live in the ``scoring`` package because the training step (:mod:`scoring.train`) runs on
an Azure ML node with this package alone; the app (``shared.models.training``, the CLI, the
API) re-exports them. The product is a template: add yours to :func:`estimator_templates`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DEFAULT_ESTIMATOR = "baseline"
"""The default detector (scoring.baseline); "ocsvm" is the reference one-class SVM."""


def estimator_templates() -> dict[str, Callable[[], Any]]:
    """Named estimators the CLI and API can train (the product is a template: add yours)."""
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from scoring.baseline import RobustBaseline
    from scoring.modeling import default_estimator

    return {
        "baseline": RobustBaseline,
        "ocsvm": default_estimator,
        "isolation_forest": lambda: IsolationForest(n_estimators=100, random_state=0),
        "lof": lambda: make_pipeline(
            StandardScaler(), LocalOutlierFactor(n_neighbors=20, novelty=True)
        ),
    }


def estimator_features(estimator: str) -> tuple[str, ...]:
    """The features an estimator template is trained on by default."""
    from scoring.baseline import FEATURES
    from scoring.features import DEFAULT_FEATURES

    return FEATURES if estimator == "baseline" else DEFAULT_FEATURES
