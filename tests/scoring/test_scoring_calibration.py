"""Default model and threshold calibration on reference-like data; the feature definition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scoring_testdata import READINGS_PER_BUCKET, REFERENCE_RANGES, readings_to_features
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from scoring.features import AGGREGATES, DEFAULT_FEATURES, aggregate_readings
from scoring.modeling import MIN_TRAINING_BUCKETS, default_estimator, fit_sensor_model

TARGET = 0.001  # the default TARGET_FALSE_ALARM_RATE
TRAIN_BUCKETS = 240  # the reference's 4 hours of 5-second readings, in 1-minute buckets


def _readings(rng, lo, hi, n_buckets):
    return rng.uniform(lo, hi, size=(n_buckets, READINGS_PER_BUCKET))


@pytest.fixture(scope="module")
def reference_models():
    """One default model per reference sensor, trained through aggregate_readings."""
    rng = np.random.default_rng(2024)
    start = pd.Timestamp("2024-01-01T00:00:00Z")
    frames = []
    for sensor, (lo, hi) in REFERENCE_RANGES.items():
        n = TRAIN_BUCKETS * READINGS_PER_BUCKET
        frames.append(
            pd.DataFrame(
                {
                    "ts": start + pd.to_timedelta(np.arange(n) * 5, unit="s"),
                    "device": 1,
                    "sensor": sensor,
                    "value": rng.uniform(lo, hi, n),
                }
            )
        )
    buckets = aggregate_readings(pd.concat(frames, ignore_index=True))
    models = {}
    for sensor in REFERENCE_RANGES:
        train = buckets[buckets["sensor"] == str(sensor)]
        assert len(train) == TRAIN_BUCKETS
        models[sensor] = fit_sensor_model("1", str(sensor), 1, train)
    return models


def test_aggregate_readings_matches_the_feature_contract():
    readings = pd.DataFrame(
        {
            "ts": ["2024-01-01T00:00:00", "2024-01-01T00:00:30", "2024-01-01T00:01:10"],
            "device": ["d", "d", "d"],
            "sensor": ["s", "s", "s"],
            "value": [1.0, 3.0, 7.0],
        }
    )
    out = aggregate_readings(readings)
    assert list(out.columns) == ["device", "sensor", "bucket_start", *AGGREGATES]
    assert out["count"].tolist() == [2, 1]
    assert out["mean"].tolist() == [2.0, 7.0]
    assert out["std"].tolist() == [1.0, 0.0]  # population std; 0 for a single reading
    assert str(out["bucket_start"].dt.tz) == "UTC"
    assert DEFAULT_FEATURES == ("mean", "std", "min", "max")


def test_default_estimator_is_the_calibrated_pipeline():
    pipeline = default_estimator()
    assert [name for name, _ in pipeline.steps] == ["scaler", "ocsvm"]
    svm = pipeline.named_steps["ocsvm"]
    assert svm.kernel == "rbf" and 0.01 <= svm.nu <= 0.05


def test_new_normal_data_is_rarely_flagged(reference_models):
    """Calibrated on held-out folds with a modelled tail, the rate on new normal data stays
    within a small multiple of the target (a few hundred buckets cannot pin a 0.1% quantile)."""
    rng = np.random.default_rng(7)
    flagged, total = 0, 0
    for sensor, model in reference_models.items():
        calibration = model.calibration
        assert calibration["n_samples"] == TRAIN_BUCKETS
        assert calibration["train_flag_rate"] <= 2 / TRAIN_BUCKETS
        assert calibration["held_out_flag_rate"] <= 3 / TRAIN_BUCKETS
        assert calibration["threshold"] == model.threshold
        assert set(calibration["decision_quantiles"]) >= {"0.005", "0.5"}
        lo, hi = REFERENCE_RANGES[sensor]
        holdout = readings_to_features(_readings(rng, lo, hi, 2000))
        scores = model.anomaly_score(holdout)
        assert (scores > 0).mean() < 0.015, sensor
        flagged += int((scores > 0).sum())
        total += len(scores)
    assert flagged / total < 0.006


@pytest.mark.parametrize("kind", ["spike", "level_shift", "stuck"])
def test_clear_anomalies_are_flagged(reference_models, kind):
    rng = np.random.default_rng(11)
    for sensor, model in reference_models.items():
        lo, hi = REFERENCE_RANGES[sensor]
        width = hi - lo
        if kind == "spike":  # one reading per bucket a range-width above the maximum
            readings = _readings(rng, lo, hi, 200)
            readings[:, 3] = hi + width
        elif kind == "level_shift":  # the whole range moves up by half its width
            readings = _readings(rng, lo + width / 2, hi + width / 2, 200)
        else:  # stuck: every reading of a bucket identical
            readings = np.repeat(rng.uniform(lo, hi, (200, 1)), READINGS_PER_BUCKET, axis=1)
        scores = model.anomaly_score(readings_to_features(readings))
        assert (scores > 0).mean() >= 0.95, (sensor, kind, (scores > 0).mean())


def test_reference_parameters_are_tamed_by_calibration():
    # nu=0.0001, gamma=0.01 put the raw boundary (decision < 0) where it flagged whole sensors;
    # the calibrated threshold keeps the false-alarm rate near the target anyway.
    rng = np.random.default_rng(5)
    reference = Pipeline(
        [("scaler", StandardScaler()), ("ocsvm", OneClassSVM(nu=0.0001, gamma=0.01))]
    )
    train = readings_to_features(_readings(rng, 30, 40, TRAIN_BUCKETS))
    model = fit_sensor_model("1", "2", 1, train, estimator=reference)
    holdout = readings_to_features(_readings(rng, 30, 40, 2000))
    assert (model.anomaly_score(holdout) > 0).mean() < 0.05


def test_constant_training_data_does_not_flag_normal_data():
    X = np.tile([12.0, 0.0, 12.0, 12.0], (100, 1))  # a sensor that never moved
    model = fit_sensor_model("d", "s", 1, X)
    assert model.calibration["train_flag_rate"] == 0.0
    assert not (model.anomaly_score(X) > 0).any()
    # ... and values that differ only by rounding are not alarms either
    assert not (model.anomaly_score(X + 1e-12) > 0).any()
    # while a real change is
    assert (model.anomaly_score(np.array([[15.0, 2.0, 12.0, 19.0]])) > 0).all()


def test_zero_variance_feature_does_not_flag_everything():
    rng = np.random.default_rng(3)
    train = readings_to_features(_readings(rng, 10, 15, TRAIN_BUCKETS))
    train[:, 1] = 0.0  # e.g. one reading per bucket: std is always 0
    model = fit_sensor_model("d", "s", 1, train)
    holdout = readings_to_features(_readings(rng, 10, 15, 1000))
    holdout[:, 1] = 0.0
    assert (model.anomaly_score(holdout) > 0).mean() < 0.03


def test_nan_rows_are_dropped_and_too_little_data_is_refused():
    rng = np.random.default_rng(1)
    X = readings_to_features(_readings(rng, 10, 15, 60))
    X[:5, 0] = np.nan
    X[5, 2] = np.inf
    model = fit_sensor_model("d", "s", 1, X)
    assert model.calibration["n_samples"] == 54
    assert model.calibration["n_dropped"] == 6
    X[: 60 - MIN_TRAINING_BUCKETS + 1] = np.nan
    with pytest.raises(ValueError, match=r"d/s: only 9 usable training buckets \(51 dropped"):
        fit_sensor_model("d", "s", 1, X)
    with pytest.raises(ValueError, match="expected"):
        fit_sensor_model("d", "s", 1, np.zeros((50, 3)))
    with pytest.raises(ValueError, match="lacks feature columns"):
        fit_sensor_model("d", "s", 1, pd.DataFrame({"mean": np.ones(50)}))
