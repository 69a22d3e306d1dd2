"""Sliding-window order statistics (scoring.rolling) select exactly what np.partition selects,
and the default detector's results are the same with them as with np.partition.

The detector's mathematics belongs to scoring/baseline.py and is tuned there: these tests pin
the implementation of its recent-history comparison, not its tuning. The known values of
``_recent_deviation`` below were computed with the np.partition implementation before it was
replaced; the whole ``score`` is compared with the same function run on np.partition.
"""

from __future__ import annotations

import numpy as np
import pytest

from scoring import baseline
from scoring.rolling import _popcount_swar, sliding_order_statistics


def partition_order_statistics(values, window, kth, n_windows=None):
    """The reference: np.partition over every sliding window."""
    n = values.shape[1] - window + 1 if n_windows is None else n_windows
    windows = np.lib.stride_tricks.sliding_window_view(values, window, axis=1)[:, :n]
    part = np.partition(windows, kth, axis=2)
    return np.stack([part[:, :, k] for k in kth])


@pytest.mark.parametrize(
    ("series", "length", "window"),
    [
        (7, 156, 48),  # a chunk's sensor: 48 context + 60 window rows, padded by 48
        (5, 48, 48),  # one window
        (3, 49, 48),
        (4, 4368, 48),  # training: 3 days of 1-minute buckets, many segments
        (6, 30, 5),
        (3, 300, 130),  # a window wider than two 64-bit words of ranks
        (2, 1, 1),
    ],
)
def test_sliding_order_statistics_equal_partition(series, length, window):
    rng = np.random.default_rng(length * 31 + window)
    values = rng.normal(size=(series, length))
    values[0] = np.round(values[0] * 2)  # many ties
    if length > 10:
        values[1, 3:9] = np.nan  # NaN sorts last in both
        values[-1, length // 2 :] = 4.25  # a flat run
    kth = tuple(sorted({0, window // 4, window // 2, (3 * window) // 4, window - 1}))
    got = sliding_order_statistics(values, window, kth)
    np.testing.assert_array_equal(got, partition_order_statistics(values, window, kth))
    if length - window + 1 > 2:  # fewer windows than fit
        n = length - window - 1
        np.testing.assert_array_equal(
            sliding_order_statistics(values, window, kth, n),
            partition_order_statistics(values, window, kth, n),
        )


def test_sliding_order_statistics_rejects_bad_arguments():
    values = np.zeros((2, 10))
    with pytest.raises(ValueError, match="window"):
        sliding_order_statistics(values, 11, (0,))
    with pytest.raises(ValueError, match="orders"):
        sliding_order_statistics(values, 4, (4,))
    with pytest.raises(ValueError, match="windows"):
        sliding_order_statistics(values, 4, (0,), 8)
    assert sliding_order_statistics(np.zeros((0, 10)), 4, (1, 2)).shape == (2, 0, 7)


def test_popcount_fallback_equals_numpy():
    words = np.random.default_rng(1).integers(0, 2**63, 1000, dtype=np.uint64)
    words[:3] = [0, 1, 2**63 - 1]
    expected = np.array([bin(int(x)).count("1") for x in words])
    np.testing.assert_array_equal(_popcount_swar(words), expected)


def test_recent_deviation_known_values():
    """Values of the np.partition implementation (computed before it was replaced)."""
    rng = np.random.default_rng(7)
    values = np.round(rng.normal(10, 2, (3, 70)), 1)  # ties: one decimal
    values[1, 20:40] += 6.0
    values[2] = np.repeat(values[2, ::7], 7)[:70]  # a sensor of long flat runs
    floor = np.array([0.05, 0.05, 0.3])
    z = baseline._recent_deviation(values, floor)
    known = {
        (0, 0): 0.0,
        (0, 5): 40.0,
        (0, 47): 0.4046999999999998,
        (0, 48): 0.6070500000000002,
        (0, 69): 0.8093999999999999,
        (1, 20): 4.877153846153843,
        (1, 21): 6.226153846153842,
        (1, 39): 1.0742037037037033,
        (1, 45): 0.8140517241379311,
        (2, 30): 1.1871199999999995,
        (2, 66): 0.5620833333333333,
    }
    for cell, value in known.items():
        assert z[cell] == pytest.approx(value, rel=0, abs=1e-12), cell


def _sensor(rng: np.random.Generator, n: int, start_minute: int = 0) -> np.ndarray:
    """FEATURES rows of a sensor with a daily cycle, 12 readings per 1-minute bucket."""
    minutes = start_minute + np.arange(n)
    day = (minutes % 1440) / 1440
    readings = (20 + 5 * np.sin(2 * np.pi * day))[:, None] + rng.normal(0, 1, (n, 12))
    return np.stack(
        [readings.mean(1), readings.min(1), readings.max(1), readings.std(1), day], axis=1
    )


def test_scores_equal_the_partition_implementation(monkeypatch):
    """score() of several sensors (a level shift, a spike, a noise burst, a flat sensor) is the
    same to 1e-12 with np.partition as with scoring.rolling, and graded scores occur."""
    rng = np.random.default_rng(20261201)
    models, tests = [], []
    for i in range(4):
        model = baseline.RobustBaseline().fit(_sensor(rng, 3 * 1440))
        test = _sensor(rng, 48 + 120, start_minute=3 * 1440)
        test[48 + 30 : 48 + 40, :3] += 4.0 * (i + 1)
        test[48 + 80, 2] += 12.0
        test[48 + 100 : 48 + 110, 3] *= 2.5
        if i == 3:
            test[:, :4] = np.round(test[:, :4])  # coarse readings: ties everywhere
        models.append(model.params_)
        tests.append(test)
    X, params = np.stack(tests), baseline.stack_params(models)
    fast = baseline.score(X, params)
    monkeypatch.setattr(baseline, "sliding_order_statistics", partition_order_statistics)
    reference = baseline.score(X, params)
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-12)
    assert ((fast > 0.05) & (fast < 0.95)).any() and (fast >= 0.5).any()


def test_numpy_without_bitwise_count_selects_the_same(monkeypatch):
    """The SWAR fallbacks (numpy < 2.0 has no np.bitwise_count) select the same elements."""
    from scoring import rolling

    rng = np.random.default_rng(4)
    values = np.round(rng.normal(size=(6, 156)), 1)
    expected = rolling.sliding_order_statistics(values, 48, (12, 24, 36), 108)
    monkeypatch.setattr(rolling, "_popcount", _popcount_swar)
    monkeypatch.setattr(rolling, "_byte_counts", rolling._byte_counts_swar)
    got = rolling.sliding_order_statistics(values, 48, (12, 24, 36), 108)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, partition_order_statistics(values, 48, (12, 24, 36), 108))
