"""Explanations written by the scoring step (scoring.explain): why each flagged bucket was
flagged, in numbers, for the default detector and for any other estimator; nothing for sensors
without a flag."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scoring_testdata import uniform_buckets
from sklearn.ensemble import IsolationForest

from scoring import baseline, explain
from scoring.features import CONTEXT_BUCKETS, EXPLANATION_COLUMNS, PREDICTION_COLUMNS
from scoring.model_sets import load_model_set
from scoring.modeling import fit_sensor_model, write_model_set
from scoring.score import score_chunks

TRAIN_DAYS = 3
WINDOW = 60
START = pd.Timestamp("2026-03-01T00:00:00Z")


def _cycle(rng: np.random.Generator, minutes: np.ndarray, noise: float = 1.0) -> np.ndarray:
    """(n, 12) readings of a sensor with a daily cycle, one row per 1-minute bucket."""
    day = (minutes % 1440) / 1440
    return (20 + 5 * np.sin(2 * np.pi * day))[:, None] + rng.normal(0, noise, (len(minutes), 12))


def _features(readings: np.ndarray, minutes: np.ndarray) -> np.ndarray:
    day = (minutes % 1440) / 1440
    return np.stack(
        [readings.mean(1), readings.min(1), readings.max(1), readings.std(1), day], axis=1
    )


def _chunk_rows(device, sensor, readings, minutes, model_file, version, context):
    X = _features(readings, minutes)
    return pd.DataFrame(
        {
            "device": device,
            "sensor": sensor,
            "bucket_start": START + pd.to_timedelta(minutes, unit="min"),
            "count": np.full(len(minutes), readings.shape[1], dtype=np.int64),
            "mean": X[:, 0],
            "min": X[:, 1],
            "max": X[:, 2],
            "std": X[:, 3],
            "model_file": model_file,
            "model_version": np.full(len(minutes), version, dtype=np.int64),
            "context": context,
        }
    )


def _write(path, frames):
    frame = pd.concat(frames, ignore_index=True)
    schema = pa.schema(
        [
            ("device", pa.string()),
            ("sensor", pa.string()),
            ("bucket_start", pa.timestamp("us", tz="UTC")),
            ("count", pa.int64()),
            ("mean", pa.float64()),
            ("min", pa.float64()),
            ("max", pa.float64()),
            ("std", pa.float64()),
            ("model_file", pa.string()),
            ("model_version", pa.int64()),
            ("context", pa.bool_()),
        ]
    )
    pq.write_table(
        pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False), path
    )


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Four default-detector sensors (a level shift, a spike in one bucket's maximum, a stuck
    sensor, a quiet one) scored end to end over files; predictions by sensor."""
    root = tmp_path_factory.mktemp("explain")
    models_dir, chunks_dir, out = root / "models", root / "chunks", root / "out"
    models_dir.mkdir()
    chunks_dir.mkdir()
    rng = np.random.default_rng(20261201)
    train_minutes = np.arange(TRAIN_DAYS * 1440)
    test_minutes = train_minutes[-1] + 1 + np.arange(CONTEXT_BUCKETS + WINDOW)
    context = np.arange(len(test_minutes)) < CONTEXT_BUCKETS
    models, frames = [], []
    for sensor in ("shift", "spike", "stuck", "quiet"):
        train = _features(_cycle(rng, train_minutes), train_minutes)
        models.append(
            fit_sensor_model(
                "dev",
                sensor,
                7,
                train,
                features=baseline.FEATURES,
                estimator=baseline.RobustBaseline(),
            )
        )
        readings = _cycle(rng, test_minutes)
        w = CONTEXT_BUCKETS
        if sensor == "shift":
            readings[w + 20 : w + 30] += 5.0
        elif sensor == "spike":
            readings[w + 40, 3] += 25.0
        elif sensor == "stuck":
            readings[w + 30 :] = readings[w + 30, 0]
        frames.append(
            _chunk_rows("dev", sensor, readings, test_minutes, "set.baseline.npz", 7, context)
        )
    assert write_model_set(models_dir / "set.baseline.npz", models) == "baseline-npz"
    _write(chunks_dir / "c0.parquet", frames)
    summary = score_chunks(chunks_dir, models_dir, out)
    assert summary.sensors_scored == 4 and summary.sensors_failed == 0
    table = pq.read_table(out / "c0.predictions.parquet")
    frame = table.to_pandas()
    return table, {s: g.reset_index(drop=True) for s, g in frame.groupby("sensor")}


def _explanations(rows: pd.DataFrame) -> list[dict]:
    return [json.loads(t) for t in rows["explanation"] if isinstance(t, str)]


def test_predictions_carry_the_explanation_columns(scored):
    table, _ = scored
    assert table.column_names == list(PREDICTION_COLUMNS + EXPLANATION_COLUMNS)
    assert table.schema.field("explanation").type == pa.string()
    assert table.schema.field("expected_low").type == pa.float64()


def test_every_flagged_row_is_explained_and_only_those(scored):
    _, by_sensor = scored
    for sensor, rows in by_sensor.items():
        flagged = rows["is_anomaly"].to_numpy()
        explained = rows["explanation"].notna().to_numpy()
        assert (flagged == explained).all(), sensor
    # A sensor without a flag costs nothing: no band, no explanation.
    quiet = by_sensor["quiet"]
    assert not quiet["is_anomaly"].any()
    assert quiet[list(EXPLANATION_COLUMNS)].isna().all().all()


def test_a_level_shift_is_explained_as_a_level_above_its_expected_range(scored):
    _, by_sensor = scored
    rows = by_sensor["shift"]
    # A shift of 5 (readings' SD 1) is flagged within the SHORT_BUCKETS it takes the average.
    onset = int(np.flatnonzero(rows["is_anomaly"])[0])
    assert 20 <= onset < 20 + baseline.SHORT_BUCKETS and rows["is_anomaly"][onset:30].all()
    assert not rows["is_anomaly"][:20].any()
    assert rows["expected_low"].notna().all()
    assert (rows["expected_low"] < rows["expected_high"]).all()
    first = json.loads(rows["explanation"][onset])
    assert first["kind"] == "baseline" and first["model_version"] == 7
    assert first["model_format"] == "baseline-npz"
    assert first["comparison"] in ("level_vs_recent", "level_vs_time_of_day")
    assert first["direction"] == "above"
    assert first["observed"] > first["expected_high"] > first["expected_low"]
    assert first["score"] == pytest.approx(rows["score"][onset], rel=1e-5)
    assert first["rule"] in ("single_bucket", "sustained")
    assert first["summary"].startswith(first["comparison"])
    # Before the shift the band holds the mean; at the shift the mean leaves it.
    mean, low, high = rows["mean"], rows["expected_low"], rows["expected_high"]
    assert ((mean[:20] >= low[:20]) & (mean[:20] <= high[:20])).mean() > 0.9
    assert (mean[20:30] > high[20:30]).all()


def test_a_spike_inside_one_bucket_is_explained_by_its_maximum(scored):
    _, by_sensor = scored
    rows = by_sensor["spike"]
    assert rows["is_anomaly"][40]
    why = json.loads(rows["explanation"][40])
    assert why["feature"] == "max" and why["direction"] == "above"
    assert why["comparison"] in ("max_vs_recent", "novel_max")
    assert why["summary"].startswith(f"{why['comparison']}: max 4")
    assert why["observed"] == pytest.approx(rows["max"][40], rel=1e-5)
    assert why["observed"] > why["expected_high"]
    assert why["deviations"]["max_vs_recent"] > why["deviations"]["level_vs_recent"]


def test_a_stuck_sensor_is_explained_by_its_spread_below(scored):
    _, by_sensor = scored
    rows = by_sensor["stuck"]
    whys = _explanations(rows)
    assert whys and rows["is_anomaly"][30]
    first = json.loads(rows["explanation"][30])
    assert first["feature"] == "std" and first["direction"] == "below"
    assert first["observed"] == 0.0 and first["expected_low"] > 0.0


@pytest.mark.parametrize("readings", [12, 1])
def test_the_comparisons_combine_as_the_detectors_deviation(readings):
    """Per comparison and combined, the deviations are those of scoring.baseline.deviations,
    for sensors with and without a daily pattern, with many readings per bucket or one."""
    rng = np.random.default_rng(11)
    params, tests = [], []
    for daily in (True, False):
        train_minutes = np.arange(3 * 1440 if daily else 600)
        train = _features(_cycle(rng, train_minutes)[:, :readings], train_minutes)
        params.append(baseline.RobustBaseline().fit(train).params_)
        test_minutes = train_minutes[-1] + 1 + np.arange(150)
        test = _features(_cycle(rng, test_minutes)[:, :readings], test_minutes)
        test[60:70, :3] += 6.0
        tests.append(test)
    X, p = np.stack(tests), baseline.stack_params(params)
    assert p.seasonal.tolist() == [True, False]
    z, _, _ = explain.comparisons(X, p)
    level, low, high, spread, day = (X[..., i] for i in range(5))
    expected = baseline.deviations(level, day, p, (low, high, spread))
    np.testing.assert_allclose(
        explain.combined_deviation(z, p.seasonal.astype(bool)), expected, atol=1e-12
    )
    # At a few cells only (as explanations compute them): the same values there, NaN elsewhere.
    cells = rng.random(level.shape) < 0.05
    cells[:, :3] = True  # a sensor's first buckets compare with its first value
    sparse, _, _ = explain.comparisons(X, p, cells)
    for name, values in z.items():
        np.testing.assert_allclose(sparse[name][cells], values[cells], atol=1e-12)
    if readings > 1:  # (with one reading the detector does not compare min and max at all)
        assert np.isnan(sparse["max_vs_recent"][~cells]).all()


def test_the_band_uses_the_detectors_own_recent_statistics():
    """The median and scale behind the band are exactly those of the detector's deviation."""
    rng = np.random.default_rng(3)
    values = np.round(rng.normal(10, 2, (5, 150)), 1)
    floor = np.full(5, 0.05)
    median, scale = explain._recent_centre(values, floor)
    np.testing.assert_allclose(
        np.abs(values - median) / scale, baseline._recent_deviation(values, floor), atol=1e-12
    )
    # The band's deviation: held for SHORT_BUCKETS buckets, it scores exactly the sensitivity.
    z = explain.band_deviation(np.array([0.4]), np.array([0.3]), np.array([0.5]))
    standard = (np.log1p(z) - 0.4) / 0.3
    from scipy.special import log_ndtr

    assert -log_ndtr(-standard)[0] / np.log(10) / baseline.SCORE_DECADES == pytest.approx(0.5)


def test_other_estimators_get_feature_deviations_and_say_so(tmp_path):
    """A one-class SVM (npz), an isolation forest (skops) and a model trained before training
    statistics were stored: the first two name the feature that deviated from the training
    distribution, labelled as such; the last says it cannot."""
    rng = np.random.default_rng(5)
    svm = fit_sensor_model("dev", "svm", 2, uniform_buckets(rng, 10, 15, 240))
    old = fit_sensor_model("dev", "old", 2, uniform_buckets(rng, 10, 15, 240))
    for key in ("feature_median", "feature_iqr", "feature_low", "feature_high"):
        del old.calibration[key]
    iso = fit_sensor_model(
        "dev",
        "iso",
        2,
        uniform_buckets(rng, 10, 15, 240),
        estimator=IsolationForest(n_estimators=25, random_state=0),
        target_false_alarm_rate=0.01,  # a forest's decision saturates: 0.1 % is out of reach
    )
    models_dir, chunks_dir, out = tmp_path / "m", tmp_path / "c", tmp_path / "o"
    models_dir.mkdir()
    chunks_dir.mkdir()
    write_model_set(models_dir / "a.npz", [svm, old])
    write_model_set(models_dir / "b.skops.zip", [iso])
    frames = []
    for sensor, file in (("svm", "a.npz"), ("old", "a.npz"), ("iso", "b.skops.zip")):
        X = uniform_buckets(rng, 10, 15, 30)
        X[10] = uniform_buckets(rng, 40, 45, 1)[0]  # a bucket far above anything in training
        frame = pd.DataFrame(
            {
                "device": "dev",
                "sensor": sensor,
                "bucket_start": START + pd.to_timedelta(np.arange(30), unit="min"),
                "count": 12,
                "mean": X[:, 0],
                "std": X[:, 1],
                "min": X[:, 2],
                "max": X[:, 3],
                "model_file": file,
                "model_version": 2,
                "context": False,
            }
        )
        frames.append(frame)
    _write(chunks_dir / "c1.parquet", frames)
    score_chunks(chunks_dir, models_dir, out)
    frame = pq.read_table(out / "c1.predictions.parquet").to_pandas()
    by = {s: g.reset_index(drop=True) for s, g in frame.groupby("sensor")}
    for sensor in ("svm", "iso"):
        rows = by[sensor]
        assert rows["is_anomaly"][10], sensor
        why = json.loads(rows["explanation"][10])
        assert why["kind"] == "feature_deviation" and why["available"] is True
        assert "no explanation of its own" in why["description"]
        assert why["feature"] in ("mean", "min", "max") and why["direction"] == "above"
        assert why["observed"] == pytest.approx(rows[why["feature"]][10], rel=1e-5)
        assert why["observed"] > 39.0 and why["expected_high"] < 16.0
        assert why["deviation"] > 10 and why["features"][0]["feature"] == why["feature"]
        assert len(why["features"]) == 3 and why["summary"].startswith("feature deviation")
        assert why["model_version"] == 2
        assert why["estimator"] == ("OneClassSVM" if sensor == "svm" else "IsolationForest")
        assert rows["expected_low"].notna().all()  # the mean's training range, every row
    rows = by["old"]
    why = json.loads(rows["explanation"][10])
    assert why["kind"] == "feature_deviation" and why["available"] is False
    assert "trained before" in why["description"]
    assert rows["expected_low"].isna().all()
    # The stored statistics survive the npz round trip.
    loaded = load_model_set(models_dir / "a.npz")
    assert "feature_median" in loaded.calibration(0) and "feature_median" not in loaded.calibration(
        1
    )
