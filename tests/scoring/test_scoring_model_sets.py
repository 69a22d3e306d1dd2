"""Model set files: both formats round trip, format choice, and safe loading."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest
from sklearn.tree import DecisionTreeClassifier

from scoring.model_sets import (
    ModelSetError,
    SensorModel,
    SkopsModelSet,
    UntrustedModelError,
    check_trusted_types,
    load_model_set,
    model_set_filename,
)
from scoring.modeling import fit_sensor_model, model_set_format, write_model_set


class SneakyEstimator(BaseEstimator):
    """Not on the allow-list: a stored model must never bring its own code."""

    def fit(self, X, y=None):
        return self

    def decision_function(self, X):
        return np.zeros(len(X))


def _data(seed: int, n: int = 240) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)) * [0.4, 0.2, 1.0, 1.0] + [12.5, 1.4, 10.2, 14.8]


def _default_models(count: int = 3) -> list[SensorModel]:
    return [fit_sensor_model("dev-1", f"sensor-{i}", 2, _data(i)) for i in range(count)]


def _predict_only_model() -> SensorModel:
    # A supervised detector without decision_function: scored by scikit-learn's -1/1 labels.
    X = _data(9)
    labels = np.where(X[:, 0] > 13.0, -1, 1)
    tree = DecisionTreeClassifier(max_depth=2, random_state=0).fit(X, labels)
    return SensorModel("dev-2", "tree", 1, ("mean", "std", "min", "max"), tree, 0.0, {})


def test_model_set_filename_and_format_choice():
    assert model_set_filename("run-7", "ocsvm-npz") == "run-7.npz"
    assert model_set_filename("run-7", "skops") == "run-7.skops.zip"
    with pytest.raises(ValueError):
        model_set_filename("run-7", "pickle")
    defaults = _default_models(2)
    iso = fit_sensor_model("d", "s", 1, _data(5), estimator=IsolationForest(n_estimators=10))
    assert model_set_format(defaults) == "ocsvm-npz"
    assert model_set_format(defaults + [iso]) == "skops"


def test_npz_round_trip(tmp_path):
    models = _default_models()
    path = tmp_path / model_set_filename("set", "ocsvm-npz")
    assert write_model_set(path, models) == "ocsvm-npz"
    with np.load(path, allow_pickle=False) as npz:  # plain arrays only
        assert npz["support_vectors"].ndim == 3
        assert npz["device"].dtype.kind == "U"
        assert str(npz["format"]) == "ocsvm-npz"
    loaded = load_model_set(path)
    assert loaded.format == "ocsvm-npz"
    assert loaded.keys == [m.key for m in models]
    test = _data(99, 50)
    for i, model in enumerate(models):
        again = loaded.model(i)
        assert again.key == model.key
        assert again.features == model.features
        assert again.threshold == model.threshold
        assert again.calibration == model.calibration
        np.testing.assert_allclose(again.anomaly_score(test), model.anomaly_score(test), atol=1e-9)
    found = loaded.lookup(["dev-1", "dev-1", "dev-1"], ["sensor-2", "sensor-0", "nope"], [2, 3, 2])
    assert found.tolist() == [2, -1, -1]


def test_skops_round_trip_with_mixed_estimators(tmp_path):
    models = _default_models(1) + [
        fit_sensor_model(
            "dev-1", "iso", 4, _data(4), estimator=IsolationForest(n_estimators=20, random_state=0)
        ),
        _predict_only_model(),
    ]
    path = tmp_path / model_set_filename("mixed", "skops")
    assert write_model_set(path, models) == "skops"
    loaded = load_model_set(path)
    assert isinstance(loaded, SkopsModelSet)
    assert loaded.keys == [m.key for m in models]
    test = _data(77, 40)
    for i, model in enumerate(models):
        again = loaded.model(i)
        assert type(again.estimator) is type(model.estimator)
        assert again.threshold == model.threshold
        np.testing.assert_array_equal(again.anomaly_score(test), model.anomaly_score(test))
    # The predict-only model scores +1 for outliers (label -1) and -1 otherwise.
    tree_scores = loaded.model(2).anomaly_score(test)
    assert set(np.unique(tree_scores)) <= {-1.0, 1.0}
    np.testing.assert_array_equal(tree_scores == 1.0, test[:, 0] > 13.0)


def test_default_models_can_be_forced_into_skops(tmp_path):
    models = _default_models(2)
    assert write_model_set(tmp_path / "d.skops.zip", models, format="skops") == "skops"
    loaded = load_model_set(tmp_path / "d.skops.zip")
    test = _data(1, 10)
    np.testing.assert_allclose(loaded.model(1).anomaly_score(test), models[1].anomaly_score(test))


def test_skops_refuses_untrusted_type(tmp_path):
    sneaky = SensorModel("dev", "sneaky", 1, ("mean",), SneakyEstimator().fit(None), 0.0, {})
    path = tmp_path / "sneaky.skops.zip"
    write_model_set(path, _default_models(1) + [sneaky], format="skops")
    loaded = load_model_set(path)  # the manifest is data; nothing is unpickled yet
    assert loaded.model(0).estimator is not None  # the allow-listed entry loads
    with pytest.raises(UntrustedModelError, match="SneakyEstimator") as error:
        loaded.model(1)
    assert "allow-list" in str(error.value)


def test_trust_check_rules():
    assert check_trusted_types(["sklearn.tree._tree.Tree"]) == ["sklearn.tree._tree.Tree"]
    with pytest.raises(UntrustedModelError, match="builtins.eval"):
        check_trusted_types(["builtins.eval"])
    with pytest.raises(UntrustedModelError, match="numpy.load"):
        check_trusted_types(["numpy.load"])  # a function, not a class
    with pytest.raises(UntrustedModelError, match="sklearn.not_there.Thing"):
        check_trusted_types(["sklearn.not_there.Thing"])
    assert check_trusted_types(["my.Estimator"], extra_trusted=["my.Estimator"]) == ["my.Estimator"]


def test_corrupt_and_foreign_files_are_rejected(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(ModelSetError, match="not a readable model set"):
        load_model_set(garbage)
    with pytest.raises(FileNotFoundError):
        load_model_set(tmp_path / "absent.npz")
    # An npz holding an object array needs pickle: refused, not unpickled.
    buffer = io.BytesIO()
    np.savez(buffer, format=np.array("ocsvm-npz"), device=np.array(["a", 1], dtype=object))
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(buffer.getvalue())
    with pytest.raises(ModelSetError):
        load_model_set(pickled)
    # A zip with a manifest of another format.
    other = tmp_path / "other.skops.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("manifest.json", json.dumps({"format": "pickle", "models": []}))
    with pytest.raises(ModelSetError, match="manifest format"):
        load_model_set(other)


def test_duplicate_keys_and_bad_inputs_are_refused(tmp_path):
    model = _default_models(1)[0]
    with pytest.raises(ValueError, match="duplicate"):
        write_model_set(tmp_path / "dup.npz", [model, model])
    with pytest.raises(ValueError, match="ocsvm-npz needs"):
        write_model_set(tmp_path / "x.npz", [_predict_only_model()], format="ocsvm-npz")
    with pytest.raises(ValueError):
        write_model_set(tmp_path / "empty.npz", [])


def test_skops_entry_is_plain_skops(tmp_path):
    # Each entry can be inspected with skops' own tools (no custom container inside).
    path = tmp_path / "one.skops.zip"
    write_model_set(path, _default_models(1), format="skops")
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        data = archive.read(manifest["models"][0]["entry"])
    assert manifest["models"][0]["score_kind"] == "decision_function"
    assert sio.get_untrusted_types(data=data) == []
