"""Context rows: the default detector scores only what is written, exactly as before.

A chunk carries, per sensor, the buckets before the window as context rows. The default
detector (:mod:`scoring.baseline`) needs them as history but nobody reads their scores, so the
scoring step passes each sensor's number of context rows and the detector computes deviations
only from 4 rows before the window on (the 5-bucket average needs them). These tests pin that
the window rows' scores are *identical* to the computation over every row, for sensors of any
length and any number of context rows (new sensors have fewer), and that models without
history (one-class SVM) are not given the context rows at all.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scoring_testdata import uniform_buckets

from scoring import baseline
from scoring.features import CONTEXT_COLUMN, DEFAULT_FEATURES, derived_feature
from scoring.model_sets import SensorModel, write_baseline_model_set
from scoring.modeling import fit_sensor_model, write_model_set
from scoring.score import ModelSetCache, score_chunk


def _sensor(rng: np.random.Generator, n: int, start_minute: int, *, seasonal: bool, single: bool):
    """FEATURES rows (mean, min, max, std, day_fraction) of one sensor's 1-minute buckets.

    ``single``: one reading per bucket (min = max = mean, std = 0), a sensor sampled slower
    than the bucket."""
    minutes = start_minute + np.arange(n)
    day = (minutes % 1440) / 1440
    base = 20 + (6 * np.sin(2 * np.pi * day) if seasonal else np.zeros(n))
    readings = base[:, None] + rng.normal(0, 1, (n, 1 if single else 12))
    readings[rng.random(n) < 0.03] += 8.0  # spikes
    return np.stack(
        [readings.mean(1), readings.min(1), readings.max(1), readings.std(1), day], axis=1
    )


@pytest.fixture(scope="module")
def fitted() -> baseline.BaselineParams:
    rng = np.random.default_rng(11)
    return baseline.stack_params(
        [
            baseline.RobustBaseline()
            .fit(_sensor(rng, 3 * 1440, 0, seasonal=i % 2 == 0, single=i == 3))
            .params_
            for i in range(4)
        ]
    )


def _tensor(rng, counts, single):
    """A padded (s, b, 5) tensor as the scoring step builds it: short sensors repeat their last
    row (padding is never read back)."""
    width = int(max(counts))
    X = np.empty((len(counts), width, 5))
    for i, (count, one) in enumerate(zip(counts, single, strict=True)):
        rows = _sensor(rng, int(count), 3 * 1440 + i, seasonal=i % 3 == 0, single=one)
        X[i, :count] = rows
        X[i, count:] = rows[-1]
    return X


def test_window_scores_equal_the_full_computation(fitted):
    """300 sensors (two blocks of the detector), lengths 1-120, 0 to all rows context; the last
    block has only one-reading sensors (min = max = mean), which the detector treats apart."""
    rng = np.random.default_rng(5)
    s = 300
    counts = rng.integers(1, 121, s)
    counts[:5] = [108, 108, 60, 5, 1]
    choices = np.array([0, 1, 2, 3, 4, 5, 9, 48, 200, -1])
    n_context = choices[rng.integers(0, len(choices), s)]
    n_context = np.where(n_context == -1, counts - 1, np.minimum(n_context, counts))
    n_context[:5] = [48, 0, 48, 5, 1]  # a usual chunk's sensor, a new one, only context...
    single = np.zeros(s, dtype=bool)
    single[256:] = True
    single[::17] = True  # and some in the first block, among others
    X = _tensor(rng, counts, single)
    params = fitted.take(np.arange(s) % 4)

    full = baseline.score(X, params)
    fast = baseline.score(X, params, n_context)
    for i in range(s):
        window = slice(int(n_context[i]), int(counts[i]))
        np.testing.assert_array_equal(fast[i, window], full[i, window], err_msg=f"sensor {i}")
        assert np.isnan(fast[i, : n_context[i]]).all()
    assert ((full > 0.05) & (full < 0.95)).any() and (full >= 0.5).any()  # graded, some flags

    # The building blocks keep their meaning for callers that give no start (scoring.explain),
    # and give the same values from a start on.
    start = np.minimum(n_context, counts)[:256]
    level, low, high, spread, day = (X[:256, :, i] for i in range(5))
    p = params.take(np.arange(256))
    z_full = baseline.deviations(level, day, p, (low, high, spread))
    z_from = baseline.deviations(level, day, p, (low, high, spread), start=start)
    r_full = baseline._recent_deviation(high, p.floor)
    r_from = baseline._recent_deviation(high, p.floor, start=start)
    for i in range(256):
        np.testing.assert_array_equal(z_from[i, start[i] :], z_full[i, start[i] :])
        np.testing.assert_array_equal(r_from[i, start[i] :], r_full[i, start[i] :])
        assert np.isnan(z_from[i, : start[i]]).all() and np.isnan(r_from[i, : start[i]]).all()


def test_a_sensors_scores_do_not_depend_on_its_chunk_neighbours(fitted):
    """Each sensor scored alone equals it scored in a block with others of another kind: the
    one-reading rule (its min and max are its mean) is decided per sensor. Before, one sensor
    with several readings per bucket in a block of 256 made the others' min and max compared
    too, so a one-reading seasonal sensor's scores changed with the chunk it landed in."""
    rng = np.random.default_rng(21)
    counts = np.array([108, 108, 108, 108, 60, 30])
    single = np.array([True, False, True, False, True, False])
    X = _tensor(rng, counts, single)
    params = fitted.take(np.array([0, 1, 2, 3, 0, 1]))  # seasonal ones: 0 and 2
    assert params.seasonal.tolist() == [True, False, True, False, True, False]
    n_context = np.array([48, 48, 0, 48, 5, 3])
    X[0, 70:74, :3] += 40.0  # a step on the one-reading sensors, so something is flagged
    X[2, 80:83, :3] += 40.0
    together = baseline.score(X, params, n_context)
    for i in range(len(counts)):
        alone = baseline.score(X[i : i + 1], params.take(np.array([i])), n_context[i : i + 1])
        np.testing.assert_array_equal(alone[0], together[i], err_msg=f"sensor {i}")
    only_single = np.flatnonzero(single)
    apart = baseline.score(X[only_single], params.take(only_single), n_context[only_single])
    np.testing.assert_array_equal(apart, together[only_single])
    assert (together[0, 70:74] >= 0.5).any()
    # Which sensors compare their min and max: not the one-reading ones, nor a constant spread.
    level, low, spread = X[..., 0], X[..., 1], X[..., 3]
    assert baseline.compared_sensors(low, level).tolist() == (~single).tolist()
    assert not baseline.compared_sensors(spread, level)[single].any()


def test_strided_recent_past_is_the_window_before_the_last_multiple_of_the_stride():
    """Min, max and spread are compared with the RECENT_BUCKETS buckets before bucket
    ``t - t % OTHERS_STRIDE`` (the first value standing in before a sensor's first row), from
    any start on: checked against that definition computed one bucket at a time."""
    rng = np.random.default_rng(4)
    s, b, w = 7, 130, baseline.RECENT_BUCKETS
    stride = baseline.OTHERS_STRIDE
    values = np.round(rng.normal(10, 2, (s, b)), 1)  # rounded: ties
    floor = np.full(s, 0.05)
    start = np.array([0, 1, 7, 8, 9, 64, 129])
    n = b - int(start.min())
    got = baseline._recent_deviation_from(values, floor, start, n, stride)
    for i in range(s):
        history = np.concatenate([np.repeat(values[i, :1], w), values[i]])
        for k in range(n):
            t = min(start[i] + k, b - 1)
            window = np.sort(history[t - t % stride : t - t % stride + w])
            q_low, median, q_high = window[w // 4], window[w // 2], window[(3 * w) // 4]
            scale = max((q_high - q_low) / 1.349, floor[i])
            assert got[i, k] == pytest.approx(abs(values[i, t] - median) / scale, abs=1e-12)
    # A stride of 1 is the exact sliding window.
    np.testing.assert_allclose(
        baseline._recent_deviation_from(values, floor, np.zeros(s, np.intp), b, 1),
        baseline._recent_deviation(values, floor),
    )


def test_short_mean_equals_the_running_sum_form():
    """The 5-bucket mean is a plain sum of its terms (so it does not depend on how many buckets
    before were computed); it equals the running-sum form it replaced to rounding."""
    raw = np.random.default_rng(3).gamma(2.0, 0.4, (50, 200))
    cum = np.cumsum(raw, axis=1)
    previous = cum.copy()
    previous[:, 5:] = cum[:, 5:] - cum[:, :-5]
    previous /= np.minimum(np.arange(1, 201), 5)
    np.testing.assert_allclose(baseline._short_mean(raw), previous, rtol=0, atol=1e-12)


def test_n_context_of_the_wrong_shape_is_refused(fitted):
    X = _tensor(np.random.default_rng(1), [60, 60], [False, False])
    with pytest.raises(ValueError, match="n_context"):
        baseline.score(X, fitted.take(np.arange(2)), np.array([48]))


def _chunk_table(sensors: list[tuple[str, np.ndarray, int, str]], window_start: pd.Timestamp):
    """Chunk rows: per sensor (name, FEATURES rows, context rows, model file), the context rows
    ending at `window_start`."""
    frames = []
    for name, rows, n_context, model_file in sensors:
        starts = window_start + pd.to_timedelta(np.arange(len(rows)) - n_context, unit="min")
        frames.append(
            pd.DataFrame(
                {
                    "device": "dev",
                    "sensor": name,
                    "bucket_start": starts,
                    "count": np.full(len(rows), 12, dtype=np.int64),
                    "mean": rows[:, 0],
                    "min": rows[:, 1],
                    "max": rows[:, 2],
                    "std": rows[:, 3],
                    "model_file": model_file,
                    "model_version": np.ones(len(rows), dtype=np.int64),
                    CONTEXT_COLUMN: np.arange(len(rows)) < n_context,
                }
            )
        )
    return pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)


def test_score_chunk_passes_context_to_history_models_only(fitted, tmp_path):
    """Through the scoring step: default-detector sensors with 48, 3 and only context rows score
    their window rows exactly as the full computation does; one-class SVM sensors are given
    no context rows (a NaN in one fails nothing, as no model reads it)."""
    rng = np.random.default_rng(8)
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    names = ["usual", "new", "history_only"]
    estimators = []
    for i, _ in enumerate(names):
        estimator = baseline.RobustBaseline()
        estimator.params_ = fitted.take(np.array([i]))
        estimators.append(estimator)
    write_baseline_model_set(
        models_dir / "set.baseline.npz",
        [
            SensorModel("dev", name, 1, baseline.FEATURES, estimator, 0.0)
            for name, estimator in zip(names, estimators, strict=True)
        ],
    )
    svm = fit_sensor_model("dev", "svm", 1, uniform_buckets(rng, 10, 15, 240))
    svm_only_context = fit_sensor_model("dev", "svm_history", 1, uniform_buckets(rng, 10, 15, 240))
    write_model_set(models_dir / "set.npz", [svm, svm_only_context])

    window_start = pd.Timestamp("2024-01-04T00:00:00Z")
    minute0 = int((window_start.value // 60_000_000_000) % 1440)
    usual = _sensor(rng, 48 + 30, minute0 - 48, seasonal=True, single=False)
    new = _sensor(rng, 3 + 30, minute0 - 3, seasonal=False, single=False)
    history_only = _sensor(rng, 20, minute0 - 20, seasonal=False, single=False)
    svm_rows = np.zeros((10 + 20, 5))
    svm_rows[:, [0, 3, 1, 2]] = uniform_buckets(rng, 10, 15, 30)  # DEFAULT_FEATURES order
    svm_rows[2, 0] = np.nan  # in a context row
    svm_history_rows = svm_rows[:10].copy()
    table = _chunk_table(
        [
            ("usual", usual, 48, "set.baseline.npz"),
            ("new", new, 3, "set.baseline.npz"),
            ("history_only", history_only, 20, "set.baseline.npz"),
            ("svm", svm_rows, 10, "set.npz"),
            ("svm_history", svm_history_rows, 10, "set.npz"),
        ],
        window_start,
    )
    pq.write_table(table, tmp_path / "c1.parquet")

    result = score_chunk(tmp_path / "c1.parquet", tmp_path, ModelSetCache(models_dir))
    assert (result.error, result.sensors_failed, result.sensors_scored) == (None, 0, 5)
    assert not (tmp_path / "c1.errors.parquet").exists()
    out = pq.read_table(tmp_path / "c1.predictions.parquet").to_pandas()
    assert out.groupby("sensor").size().to_dict() == {"usual": 30, "new": 30, "svm": 20}
    assert (out["bucket_start"] >= window_start).all()

    for i, (name, rows, n_context) in enumerate([("usual", usual, 48), ("new", new, 3)]):
        X = rows.copy()
        starts_us = (window_start.value // 1000) + 60_000_000 * (np.arange(len(X)) - n_context)
        X[:, 4] = derived_feature("day_fraction", starts_us)  # as the step derives it
        expected = baseline.score(X[None], fitted.take(np.array([i])))[0, n_context:]
        got = out.loc[out["sensor"] == name, "score"].to_numpy()
        np.testing.assert_array_equal(got, expected)
    window_features = svm_rows[10:][:, [0, 3, 1, 2]]
    assert list(DEFAULT_FEATURES) == ["mean", "std", "min", "max"]
    svm_scores = out.loc[out["sensor"] == "svm", "score"].to_numpy()
    model_set = ModelSetCache(models_dir).get("set.npz")
    graded = model_set.graded_scores(np.array([0]), svm.anomaly_score(window_features)[None, :])[0]
    np.testing.assert_allclose(svm_scores, graded, rtol=0, atol=1e-9)
