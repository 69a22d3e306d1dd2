"""The vectorised one-class SVM equals scikit-learn's decision_function."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from scoring.kernels import ocsvm_decision_function
from scoring.model_sets import NpzModelSet, load_model_set
from scoring.modeling import fit_sensor_model, write_model_set


def _random_models(rng: np.random.Generator, n_models: int):
    """Models with differing feature counts, support-vector counts, nu, gamma and scales."""
    models, data = [], []
    for i in range(n_models):
        n_features = int(rng.integers(1, 6))
        n_train = int(rng.integers(30, 400))
        scale = rng.uniform(0.1, 50, n_features)
        offset = rng.uniform(-100, 100, n_features)
        X = rng.normal(size=(n_train, n_features)) * scale + offset
        if i % 7 == 0:
            X[:, 0] = offset[0]  # a zero-variance feature: StandardScaler uses scale 1
        estimator = Pipeline(
            [
                ("scaler", StandardScaler()),
                (
                    "ocsvm",
                    OneClassSVM(
                        nu=float(rng.uniform(0.01, 0.5)),
                        gamma=["scale", float(rng.uniform(0.005, 2.0))][i % 2],
                    ),
                ),
            ]
        )
        features = tuple(f"f{j}" for j in range(n_features))
        models.append(
            fit_sensor_model("dev", f"s{i}", i % 3, X, features=features, estimator=estimator)
        )
        # Test data: normal points, far outliers and a few exact support vectors.
        test = rng.normal(size=(25, n_features)) * scale * 3 + offset
        test[:3] = offset + 1e3 * scale
        data.append(test)
    return models, data


def test_fast_path_equals_sklearn_for_many_random_models(tmp_path):
    rng = np.random.default_rng(42)
    models, data = _random_models(rng, 60)
    n_support = {m.calibration["n_support_vectors"] for m in models}
    assert len(n_support) > 20, "the models should differ in support-vector count"

    path = tmp_path / "set.npz"
    assert write_model_set(path, models) == "ocsvm-npz"
    model_set = load_model_set(path)
    assert isinstance(model_set, NpzModelSet)

    for n_features in sorted({len(m.features) for m in models}):
        index = np.array([i for i, m in enumerate(models) if len(m.features) == n_features])
        X = np.stack([data[i] for i in index])
        fast = model_set.decision_function(index, X)
        for row, i in enumerate(index):
            expected = models[i].estimator.decision_function(data[i])
            np.testing.assert_allclose(fast[row], expected, rtol=0, atol=1e-9)
        # Scores use the calibrated threshold: score = threshold - decision_function.
        result = model_set.score(index, X, np.full(len(index), X.shape[1]))
        assert not result.failures
        for row, i in enumerate(index):
            np.testing.assert_allclose(
                result.scores[row], models[i].anomaly_score(data[i]), rtol=0, atol=1e-9
            )


@pytest.mark.parametrize("block_elements", [1, 100, 10_000, 1 << 22])
def test_block_size_does_not_change_results(tmp_path, block_elements):
    rng = np.random.default_rng(7)
    models, data = _random_models(rng, 12)
    four = [i for i, m in enumerate(models) if len(m.features) == len(models[0].features)]
    path = tmp_path / "set.npz"
    write_model_set(path, models)
    model_set = load_model_set(path)
    params = model_set._prepared_for(len(models[0].features))
    X = np.stack([data[i] for i in four])
    got = ocsvm_decision_function(X, params, np.array(four), block_elements=block_elements)
    expected = np.stack([models[i].estimator.decision_function(data[i]) for i in four])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_packed_model_from_npz_behaves_like_the_pipeline(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 4)) * [1, 2, 3, 4] + [10, 20, 30, 40]
    model = fit_sensor_model("d", "s", 1, X)
    write_model_set(tmp_path / "one.npz", [model])
    loaded = load_model_set(tmp_path / "one.npz").model(0)
    test = rng.normal(size=(50, 4)) * 5 + [10, 20, 30, 40]
    np.testing.assert_allclose(
        loaded.estimator.decision_function(test),
        model.estimator.decision_function(test),
        rtol=0,
        atol=1e-9,
    )
    np.testing.assert_allclose(loaded.anomaly_score(test), model.anomaly_score(test), atol=1e-9)
