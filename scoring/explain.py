"""Why a bucket was flagged, in numbers: computed in the scoring step, from the chunk and models.

Only sensors with at least one flagged window row are explained (flags are rare, so the scoring
hot path is untouched: this runs after every model group is scored, on the few sensors that
need it). For those sensors the predictions file gets three nullable columns
(:data:`scoring.features.EXPLANATION_COLUMNS`); every other row has nulls there:

``expected_low``, ``expected_high`` (every row of an explained sensor)
    The band the bucket's **mean** was expected in, for the report's plot.
``explanation`` (flagged rows only)
    A compact JSON object: which comparison or feature was abnormal, in which direction, the
    observed value, the expected range, the deviation, the score and the model that judged it.

Two kinds of explanation:

``"baseline"`` (the default detector, :mod:`scoring.baseline`: its own reasoning)
    The bucket's comparisons as the detector makes them: ``level_vs_recent`` (its mean against
    the median of the :data:`~scoring.baseline.RECENT_BUCKETS` buckets before it, on the scale of
    their interquartile range), ``level_vs_time_of_day`` (its mean against the training median of
    the same hour of day, for sensors with a daily pattern), ``min_vs_recent``,
    ``max_vs_recent`` and ``spread_vs_recent`` (minimum, maximum and standard deviation against
    their own recent past), and the novelty rule's ``novel_min``, ``novel_max``,
    ``novel_spread`` (beyond the range seen in training and earlier buckets, by more than the
    margin). The one that decided the flag is named in ``comparison``; ``deviations`` lists every
    comparison's deviation in robust standard deviations; ``rule`` says how the flag came about:
    ``single_bucket`` (blatant on its own), ``sustained`` (the average deviation of the last
    :data:`~scoring.baseline.SHORT_BUCKETS` buckets) or ``novelty``.

    The expected range of a comparison is ``centre +- z_band * scale``, with ``z_band`` the
    deviation that, held for :data:`~scoring.baseline.SHORT_BUCKETS` buckets, reaches the
    sensitivity under the sensor's own likelihood (``expm1(raw_mean + k * raw_std)``, ``k`` the
    standard normal quantile of the sensitivity's tail probability). For the level of a sensor
    with a daily pattern, the band drawn is the hull of its recent and time-of-day bands (the
    level counts as normal if either explains it). For novelty, it is the range seen before plus
    the margin.

``"feature_deviation"`` (any other estimator: one-class SVMs, skops models)
    Such estimators give no reasons of their own, so the explanation says which of the model's
    features deviated most from the model's *training distribution*, as robust z-scores
    (``(value - training median) / (training IQR / 1.349)``), with each feature's central 99 % of
    training values as its expected range, and says that this is what it is. It needs the
    per-feature training statistics that :func:`scoring.modeling.fit_sensor_model` stores in the
    model's calibration (``feature_median``, ``feature_iqr``, ``feature_low``,
    ``feature_high``); a model trained before that has none, and its explanation says so
    (``"available": false``) instead of failing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from scoring import baseline as bl
from scoring.model_sets import FORMAT_BASELINE, FORMAT_NPZ, ModelSet
from scoring.rolling import sliding_order_statistics

KIND_BASELINE = "baseline"
KIND_FEATURE_DEVIATION = "feature_deviation"
TOP_FEATURES = 3
"""Features listed in a feature-deviation explanation (largest deviation first)."""
TRAINING_QUANTILES = (0.005, 0.995)
"""The training values' central 99 %: a feature's expected range in a feature-deviation
explanation (stored as ``feature_low``/``feature_high`` at training)."""
IQR_TO_SIGMA = 1.349
FEATURE_DEVIATION_NOTE = (
    "This estimator gives no explanation of its own: these are the features of this bucket "
    "farthest from the model's training data, as robust z-scores ((value - training median) / "
    "(training IQR / 1.349)). They say what is unusual about the bucket, not how the model "
    "weighed it."
)
NO_TRAINING_STATS_NOTE = (
    "This model was trained before per-feature training statistics were stored, so the "
    "features that deviated cannot be named; retrain the sensor to get them."
)

_BASIS = {
    "level_vs_recent": f"the median of the previous {bl.RECENT_BUCKETS} buckets",
    "level_vs_time_of_day": "the training median of this hour of day",
    "min_vs_recent": f"the median of the previous {bl.RECENT_BUCKETS} buckets",
    "max_vs_recent": f"the median of the previous {bl.RECENT_BUCKETS} buckets",
    "spread_vs_recent": f"the median of the previous {bl.RECENT_BUCKETS} buckets",
    "novel_min": "the range seen in training and before",
    "novel_max": "the range seen in training and before",
    "novel_spread": "the spread range seen in training and before",
}
_RECENT_OF = {
    "novel_min": "min_vs_recent",
    "novel_max": "max_vs_recent",
    "novel_spread": "spread_vs_recent",
}
_FEATURE_OF = {
    "level_vs_recent": "mean",
    "level_vs_time_of_day": "mean",
    "min_vs_recent": "min",
    "max_vs_recent": "max",
    "spread_vs_recent": "std",
    "novel_min": "min",
    "novel_max": "max",
    "novel_spread": "std",
}


@dataclass
class Explanations:
    """Explanation columns of one chunk's rows (length ``n_rows``; NaN/None where none)."""

    expected_low: np.ndarray
    expected_high: np.ndarray
    rows: np.ndarray  # int64 positions of explained (flagged) rows
    texts: list[str]  # their JSON explanations, in the order of `rows`

    def arrow_columns(self) -> dict[str, pa.Array]:
        """The three predictions-file columns (nulls outside explained rows)."""
        n = len(self.expected_low)
        index = np.full(n, -1, dtype=np.int32)
        index[self.rows] = np.arange(len(self.rows), dtype=np.int32)
        # Built as a dictionary array (one vectorised pass), then cast to plain strings.
        text = pa.DictionaryArray.from_arrays(
            pa.array(index, mask=index < 0), pa.array(self.texts, pa.string())
        ).cast(pa.string())
        return {
            "expected_low": pa.array(self.expected_low, from_pandas=True),
            "expected_high": pa.array(self.expected_high, from_pandas=True),
            "explanation": text,
        }


def empty_columns(n_rows: int) -> dict[str, pa.Array]:
    """The explanation columns of a chunk where nothing was flagged: all null."""
    return {
        "expected_low": pa.nulls(n_rows, pa.float64()),
        "expected_high": pa.nulls(n_rows, pa.float64()),
        "explanation": pa.nulls(n_rows, pa.string()),
    }


@dataclass
class ScoredGroup:
    """Sensors scored together (one model set, one feature tuple), as :mod:`scoring.score`
    hands them over: positions of the sensors in the chunk's grouping and their model index."""

    model_set: ModelSet
    names: tuple[str, ...]
    group: np.ndarray
    group_models: np.ndarray


def explain_chunk(
    groups: Sequence[ScoredGroup],
    starts: np.ndarray,
    counts: np.ndarray,
    order: np.ndarray | None,
    feature: Callable[[str], np.ndarray],
    scores: np.ndarray,
    window_rows: np.ndarray,
    sensitivity: float | np.ndarray,
    versions: np.ndarray,
) -> Explanations | None:
    """Explain the flagged window rows of a scored chunk; None when nothing was flagged.

    Parameters
    ----------
    groups : sequence of ScoredGroup
        The groups scored, as :func:`scoring.score._score_table` scored them.
    starts, counts, order :
        The chunk's grouping by sensor (first position and row count of each sensor in sorted
        order; ``order`` maps sorted positions to rows, None when rows are already grouped).
    feature : callable
        Feature column (all rows) by name.
    scores : ndarray of shape (n_rows,)
        Graded scores (NaN for rows not scored).
    window_rows : ndarray of bool, shape (n_rows,)
        Scored rows inside the run's window (not context).
    sensitivity : float or ndarray of shape (n_rows,)
        Score at or above which a row is flagged.
    versions : ndarray of int64, shape (n_rows,)
        Model version of each row.
    """
    n_rows = len(scores)
    sens = np.broadcast_to(np.asarray(sensitivity, dtype=np.float64), (n_rows,))
    with np.errstate(invalid="ignore"):
        flagged = window_rows & (scores >= sens)
    if not flagged.any():
        return None
    in_sorted = flagged if order is None else flagged[order]
    sensor_flagged = np.logical_or.reduceat(in_sorted, starts) if len(starts) else in_sorted[:0]
    out = Explanations(np.full(n_rows, np.nan), np.full(n_rows, np.nan), np.zeros(0, np.int64), [])
    rows_out: list[np.ndarray] = []
    for scored in groups:
        pick = sensor_flagged[scored.group]
        if not pick.any():
            continue
        group, models = scored.group[pick], scored.group_models[pick]
        group_counts = counts[group]
        width = int(group_counts.max())
        offsets = np.arange(width)
        rows = starts[group][:, None] + np.minimum(offsets, group_counts[:, None] - 1)
        if order is not None:
            rows = order[rows]
        valid = offsets[None, :] < group_counts[:, None]
        X = np.stack([feature(name)[rows] for name in scored.names], axis=-1)  # (s, b, f)
        model_set = scored.model_set
        if model_set.format == FORMAT_BASELINE:
            low, high, texts = _baseline(
                model_set, models, X, scores[rows], flagged[rows] & valid, sens[rows]
            )
        else:
            low, high, texts = _feature_deviation(
                model_set, scored.names, models, X, scores[rows], flagged[rows] & valid
            )
        target = rows[valid]
        out.expected_low[target] = low[valid]
        out.expected_high[target] = high[valid]
        explained = flagged[rows] & valid
        positions = rows[explained]
        versions_here = versions[positions]
        rows_out.append(positions)
        for text, version in zip(texts, versions_here.tolist(), strict=True):
            text["model_version"] = int(version)
            text["model_format"] = model_set.format
            out.texts.append(json.dumps(text, separators=(",", ":"), sort_keys=True))
    out.rows = np.concatenate(rows_out) if rows_out else np.zeros(0, np.int64)
    return out


# --------------------------------------------------------------------------- the default detector


def _num(value: float) -> float | None:
    """A JSON number at 6 significant digits (None for NaN/inf: JSON has no such numbers)."""
    value = float(value)
    return float(f"{value:.6g}") if math.isfinite(value) else None


def band_deviation(
    raw_mean: np.ndarray, raw_std: np.ndarray, sensitivity: np.ndarray
) -> np.ndarray:
    """The deviation ``z`` that, held for :data:`~scoring.baseline.SHORT_BUCKETS` buckets, scores
    ``sensitivity``: ``expm1(raw_mean + k * raw_std)`` with ``k`` such that the standard normal
    tail beyond it is ``10 ** (-sensitivity * SCORE_DECADES)``."""
    from scipy.special import ndtri

    k = -ndtri(np.power(10.0, -np.asarray(sensitivity, dtype=np.float64) * bl.SCORE_DECADES))
    return np.expm1(raw_mean + k * raw_std)


def _recent_centre(values: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and scale of the :data:`~scoring.baseline.RECENT_BUCKETS` buckets before each
    bucket, exactly as :func:`scoring.baseline._recent_deviation` takes them (its deviation is
    ``|x - median| / scale``; a test holds the two together)."""
    s, b = values.shape
    w = bl.RECENT_BUCKETS
    padded = np.concatenate([np.repeat(values[:, :1], w, axis=1), values], axis=1)
    q_low, median, q_high = sliding_order_statistics(padded, w, (w // 4, w // 2, (3 * w) // 4), b)
    scale = np.maximum((q_high - q_low) / IQR_TO_SIGMA, floor[:, None])
    return median, scale


def _baseline(
    model_set,
    models: np.ndarray,
    X: np.ndarray,
    scores: np.ndarray,
    flagged: np.ndarray,
    sens: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Band of the mean for every bucket, and the explanation of each flagged bucket (in row
    order of ``flagged``), for baseline models ``models`` of ``model_set``."""
    p = model_set.params.take(models)
    level, low, high, spread, _ = (X[..., i] for i in range(5))
    series = {"level": level, "min": low, "max": high, "spread": spread}
    z_band = band_deviation(p.raw_mean[:, None], p.raw_std[:, None], sens)
    # Each comparison, with the medians and scales of the detector's own (a test holds them
    # equal to scoring.baseline's), so the bands and the deviations agree with the score.
    # Aggregates other than the level matter at flagged buckets and the SHORT_BUCKETS - 1
    # before them (the likelihood's average) only.
    needed = flagged.copy()
    for k in range(1, bl.SHORT_BUCKETS):
        needed[:, :-k] |= flagged[:, k:]
    z, centre, scale = comparisons(X, p, needed)
    seasonal = p.seasonal.astype(bool)
    season_centre, season_scale = centre["time_of_day"], scale["time_of_day"]

    # The band of the mean: recent, or the hull with the time-of-day band (either explains it).
    half = z_band * scale["level"]
    band_low, band_high = centre["level"] - half, centre["level"] + half
    season_half = z_band * season_scale
    band_low = np.where(seasonal[:, None], np.fmin(band_low, season_centre - season_half), band_low)
    band_high = np.where(
        seasonal[:, None], np.fmax(band_high, season_centre + season_half), band_high
    )

    # The score's own terms, to tell which rule flagged the bucket: the deviation as
    # scoring.baseline.deviations combines it (the level's smaller of recent and time of day,
    # then the largest with the other aggregates), in single and averaged standard units.
    raw = np.log1p(combined_deviation(z, seasonal))
    rm, rs = p.raw_mean[:, None], p.raw_std[:, None]
    single = (raw - rm) / rs
    # scoring.baseline._short_mean at the flagged buckets: the mean over the bucket and the
    # SHORT_BUCKETS - 1 before it (fewer at a sensor's first buckets).
    fi, ft = np.nonzero(flagged)
    total, n = np.zeros(len(fi)), np.zeros(len(fi))
    for k in range(bl.SHORT_BUCKETS):
        ok = ft >= k
        total[ok] += raw[fi[ok], ft[ok] - k]
        n[ok] += 1
    averaged = np.full(raw.shape, np.nan)
    averaged[fi, ft] = (total / np.maximum(n, 1) - p.raw_mean[fi]) / p.raw_std[fi]
    averaged = np.where(single >= bl.GATE_SD, averaged, np.minimum(averaged, single))

    # Novelty, part by part (as scoring.baseline._novel combines them).
    margin = (bl.NOVELTY_MARGIN * (p.high - p.low))[:, None]
    spread_margin = (bl.NOVELTY_MARGIN * (p.spread_high - p.spread_low))[:, None]
    seen_high = bl._seen_before(high, p.high, np.maximum) + margin
    seen_low = bl._seen_before(low, p.low, np.minimum) - margin
    seen_spread_high = bl._seen_before(spread, p.spread_high, np.maximum) + spread_margin
    seen_spread_low = bl._seen_before(spread, p.spread_low, np.minimum) - spread_margin
    value_range = np.maximum(p.high - p.low, 1e-12)[:, None]
    spread_range = np.maximum(p.spread_high - p.spread_low, 1e-12)[:, None]
    excess = {
        "novel_max": np.where(high > seen_high, (high - seen_high) / value_range, 0.0),
        "novel_min": np.where(low < seen_low, (seen_low - low) / value_range, 0.0),
        "novel_spread": np.where(
            spread > seen_spread_high,
            (spread - seen_spread_high) / spread_range,
            np.where(spread < seen_spread_low, (seen_spread_low - spread) / spread_range, 0.0),
        ),
    }

    # Per flagged bucket, every value an explanation may need, as Python floats (one gather per
    # array: the loop below then does no numpy scalar work).
    def at(values) -> list[float]:
        return np.broadcast_to(values, flagged.shape)[fi, ft].tolist()

    names = list(z)
    cell = {f"z:{name}": at(z[name]) for name in names}
    cell.update({f"excess:{name}": at(excess[name]) for name in excess})
    for name in ("level", "min", "max", "spread"):
        cell[f"value:{name}"] = at(series[name])
        cell[f"centre:{name}"] = at(centre[name])
        cell[f"half:{name}"] = at(z_band * scale[name])
    cell.update(
        score=at(scores),
        sensitivity=at(sens),
        single=at(single),
        averaged=at(averaged),
        season_centre=at(season_centre),
        season_half=at(season_half),
        seen_low=at(seen_low),
        seen_high=at(seen_high),
        seen_spread_low=at(seen_spread_low),
        seen_spread_high=at(seen_spread_high),
    )
    texts = []
    for k in range(len(fi)):
        c = {key: values[k] for key, values in cell.items()}
        deviations = {name: _num(c[f"z:{name}"]) for name in names}
        novel = [name for name in excess if c[f"excess:{name}"] > 0]
        # score = max(likelihood, NOVELTY_SCORE) for a novel bucket: at exactly NOVELTY_SCORE,
        # novelty decided it (a likelihood of exactly that is a measure-zero tie).
        if novel and c["score"] <= bl.NOVELTY_SCORE + 1e-12:
            rule = "novelty"
            # The novel part whose feature deviates most from its recent past (a spike's
            # maximum rather than the spread it drags along), else the largest excess.
            comparison = max(
                novel,
                key=lambda name: (_or(c[f"z:{_RECENT_OF[name]}"], -1.0), c[f"excess:{name}"]),
            )
        else:
            single_rules = c["single"] / bl.SINGLE_BAR >= c["averaged"]
            rule = "single_bucket" if single_rules else "sustained"
            comparison = _strongest(c)
        feature = _FEATURE_OF[comparison]
        deviation = c[f"z:{_RECENT_OF.get(comparison, comparison)}"]
        if comparison == "level_vs_time_of_day":
            observed, mid, half_here = c["value:level"], c["season_centre"], c["season_half"]
            lo, hi = mid - half_here, mid + half_here
        elif comparison.endswith("_vs_recent"):
            key = comparison.removesuffix("_vs_recent")
            observed, mid, half_here = c[f"value:{key}"], c[f"centre:{key}"], c[f"half:{key}"]
            lo, hi = mid - half_here, mid + half_here
        else:  # novelty: the range seen before, with the margin
            if comparison == "novel_spread":
                observed, lo, hi = c["value:spread"], c["seen_spread_low"], c["seen_spread_high"]
            else:
                observed = c["value:max"] if comparison == "novel_max" else c["value:min"]
                lo, hi = c["seen_low"], c["seen_high"]
            mid = (lo + hi) / 2
        entry = {
            "kind": KIND_BASELINE,
            "comparison": comparison,
            "feature": feature,
            "direction": "above" if observed > mid else "below",
            "observed": _num(observed),
            "expected": _num(mid),
            "expected_low": _num(lo),
            "expected_high": _num(hi),
            "deviation": _num(deviation),
            "rule": rule,
            "score": _num(c["score"]),
            "sensitivity": _num(c["sensitivity"]),
            "deviations": deviations,
            "novel": novel,
        }
        entry["summary"] = _summary(entry)
        texts.append(entry)
    return band_low, band_high, texts


def combined_deviation(z: dict[str, np.ndarray], seasonal: np.ndarray) -> np.ndarray:
    """The bucket's deviation as :func:`scoring.baseline.deviations` combines the comparisons
    (a test holds the two equal): the level's smaller of recent and time of day (sensors with a
    daily pattern), then the largest with the other aggregates'."""
    recent = z["level_vs_recent"]
    level = np.where(seasonal[:, None], np.fmin(recent, z["level_vs_time_of_day"]), recent)
    others = (z["min_vs_recent"], z["max_vs_recent"], z["spread_vs_recent"])
    return np.fmax.reduce([level, *others])


def comparisons(X: np.ndarray, p, cells: np.ndarray | None = None) -> tuple[dict, dict, dict]:
    """Deviation of every comparison of buckets ``X`` (s, b, 5) of baseline sensors ``p``, and
    the centre and scale of each aggregate's recent past (keys level, min, max, spread,
    time_of_day).

    The level's comparisons are computed for every bucket (its band is drawn); those of the
    minimum, maximum and spread only at ``cells`` (a boolean mask, default every bucket) and are
    NaN elsewhere: explanations need them at flagged buckets and the few before them only.
    """
    level, low, high, spread, day = (X[..., i] for i in range(5))
    s, b = level.shape
    centre, scale = {}, {}
    centre["level"], scale["level"] = _recent_centre(level, p.floor)
    z = {"level_vs_recent": np.abs(level - centre["level"]) / scale["level"]}
    at = np.nonzero(np.ones((s, b), dtype=bool) if cells is None else cells)
    for name, values in (("min", low), ("max", high), ("spread", spread)):
        centre[name], scale[name] = np.full((s, b), np.nan), np.full((s, b), np.nan)
        centre[name][at], scale[name][at] = _recent_at(values, p.floor, *at)
        z[f"{name}_vs_recent"] = np.abs(values - centre[name]) / scale[name]
    # Sensors whose aggregate the detector does not compare (one reading per bucket, or never
    # changing): scoring.baseline.compared_sensors.
    for name, values in (
        ("min_vs_recent", low),
        ("max_vs_recent", high),
        ("spread_vs_recent", spread),
    ):
        z[name][~bl.compared_sensors(values, level)] = np.nan
    seasonal = p.seasonal.astype(bool)
    centre["time_of_day"] = np.take_along_axis(p.profile, bl._slots(day), axis=1)
    scale["time_of_day"] = np.broadcast_to(p.seasonal_scale[:, None], (s, b))
    z_season = np.abs(level - centre["time_of_day"]) / scale["time_of_day"]
    z_season[~seasonal] = np.nan
    z["level_vs_time_of_day"] = z_season
    return z, centre, scale


def _recent_at(
    values: np.ndarray, floor: np.ndarray, i: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Median and scale of the recent past the detector compares a minimum, maximum or spread
    with, at the cells ``(i, t)`` only: the :data:`~scoring.baseline.RECENT_BUCKETS` buckets
    before bucket ``t - t % OTHERS_STRIDE`` (:data:`scoring.baseline.OTHERS_STRIDE`), one
    ``np.partition`` of their windows."""
    w = bl.RECENT_BUCKETS
    if not len(i):
        return np.zeros(0), np.zeros(0)
    padded = np.concatenate([np.repeat(values[:, :1], w, axis=1), values], axis=1)
    anchor = t - t % bl.OTHERS_STRIDE
    windows = padded[i[:, None], anchor[:, None] + np.arange(w)]  # the w buckets before it
    kth = (w // 4, w // 2, (3 * w) // 4)
    ordered = np.partition(windows, kth, axis=1)
    q_low, median, q_high = (ordered[:, k] for k in kth)
    return median, np.maximum((q_high - q_low) / IQR_TO_SIGMA, floor[i])


def _or(value: float, default: float) -> float:
    return default if value != value else value  # NaN


def _strongest(c: dict[str, float]) -> str:
    """The comparison with the largest deviation; for the level, the one that counts (the
    smaller of recent and time of day, when the sensor has a daily pattern)."""
    level, level_name = c["z:level_vs_recent"], "level_vs_recent"
    season = c["z:level_vs_time_of_day"]
    if season == season and season <= level:
        level, level_name = season, "level_vs_time_of_day"
    best, best_name = _or(level, -1.0), level_name
    for name in ("min_vs_recent", "max_vs_recent", "spread_vs_recent"):
        value = _or(c[f"z:{name}"], -1.0)
        if value > best:
            best, best_name = value, name
    return best_name


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _summary(entry: dict) -> str:
    """One sentence for people (CLI, report, alerts)."""
    comparison = entry["comparison"]
    how = {
        "single_bucket": "on its own",
        "sustained": f"sustained over the last {bl.SHORT_BUCKETS} buckets",
        "novelty": "beyond anything seen before",
    }[entry["rule"]]
    deviation = entry.get("deviation")
    if entry["rule"] == "novelty":
        expected = f"{_BASIS[comparison]}, {_fmt(entry['expected_low'])} to "
        expected += f"{_fmt(entry['expected_high'])} with the margin"
    else:
        expected = f"the expected {_fmt(entry['expected_low'])} to "
        expected += f"{_fmt(entry['expected_high'])} ({_BASIS[comparison]}"
        expected += f", {deviation:.1f} robust SDs)" if deviation is not None else ")"
    return (
        f"{comparison}: {entry['feature']} {_fmt(entry['observed'])} {entry['direction']} "
        f"{expected}; flagged {how}, score {_fmt(entry['score'])}"
    )


# --------------------------------------------------------------------------- other estimators


def training_statistics(X: np.ndarray) -> dict[str, list[float]]:
    """Per-feature training statistics a feature-deviation explanation needs (stored in the
    model's calibration at training time): median, IQR and the central 99 % of ``X`` (n, f)."""
    X = np.asarray(X, dtype=np.float64)
    q25, median, q75 = np.percentile(X, [25, 50, 75], axis=0)
    low, high = np.quantile(X, TRAINING_QUANTILES, axis=0)
    return {
        "feature_median": [float(v) for v in median],
        "feature_iqr": [float(v) for v in q75 - q25],
        "feature_low": [float(v) for v in low],
        "feature_high": [float(v) for v in high],
    }


def _stats(calibration: dict, n_features: int) -> dict[str, np.ndarray] | None:
    try:
        stats = {
            key: np.asarray(calibration[key], dtype=np.float64)
            for key in ("feature_median", "feature_iqr", "feature_low", "feature_high")
        }
    except (KeyError, TypeError, ValueError):
        return None
    if any(v.shape != (n_features,) or not np.isfinite(v).all() for v in stats.values()):
        return None
    return stats


def _estimator_name(model_set, index: int) -> str:
    if model_set.format == FORMAT_NPZ:
        return "OneClassSVM"
    try:
        estimator = model_set.model(index).estimator
    except Exception:  # noqa: BLE001 - a name only; the model scored, so this rarely fails
        return "unknown"
    steps = getattr(estimator, "steps", None)
    final = steps[-1][1] if steps else estimator
    return type(final).__name__


def _feature_deviation(
    model_set,
    names: Sequence[str],
    models: np.ndarray,
    X: np.ndarray,
    scores: np.ndarray,
    flagged: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Feature-deviation explanations (see the module docstring) and the band of ``mean`` (the
    central 99 % of its training values), for any estimator."""
    s, b, f = X.shape
    band_low, band_high = np.full((s, b), np.nan), np.full((s, b), np.nan)
    mean_at = list(names).index("mean") if "mean" in names else None
    per_sensor = []
    for i, index in enumerate(models.tolist()):
        stats = _stats(model_set.calibration(index), f)
        per_sensor.append((stats, _estimator_name(model_set, index)))
        if stats is not None and mean_at is not None:
            band_low[i], band_high[i] = (
                stats["feature_low"][mean_at],
                stats["feature_high"][mean_at],
            )
    texts = []
    for i, t in zip(*np.nonzero(flagged), strict=True):
        stats, estimator = per_sensor[i]
        entry: dict = {
            "kind": KIND_FEATURE_DEVIATION,
            "estimator": estimator,
            "score": _num(scores[i, t]),
        }
        if stats is None:
            entry.update(available=False, description=NO_TRAINING_STATS_NOTE)
            entry["summary"] = (
                f"{estimator} flagged it (score {_fmt(entry['score'])}); "
                "no training statistics to say which features deviated"
            )
            texts.append(entry)
            continue
        x = X[i, t]
        sigma = np.maximum.reduce(
            [
                stats["feature_iqr"] / IQR_TO_SIGMA,
                0.01 * (stats["feature_high"] - stats["feature_low"]),
                1e-9 * np.maximum(1.0, np.abs(stats["feature_median"])),
            ]
        )
        zs = (x - stats["feature_median"]) / sigma
        ranked = np.argsort(-np.abs(zs), kind="stable")[:TOP_FEATURES]
        features = [
            {
                "feature": names[j],
                "observed": _num(x[j]),
                "median": _num(stats["feature_median"][j]),
                "expected_low": _num(stats["feature_low"][j]),
                "expected_high": _num(stats["feature_high"][j]),
                "z": _num(zs[j]),
                "direction": "above" if zs[j] > 0 else "below",
            }
            for j in ranked.tolist()
        ]
        top = features[0]
        entry.update(
            available=True,
            description=FEATURE_DEVIATION_NOTE,
            comparison=f"{top['feature']}_vs_training",
            feature=top["feature"],
            direction=top["direction"],
            observed=top["observed"],
            expected=top["median"],
            expected_low=top["expected_low"],
            expected_high=top["expected_high"],
            deviation=top["z"],
            features=features,
        )
        entry["summary"] = (
            f"feature deviation (not {estimator}'s own reasoning): {top['feature']} "
            f"{_fmt(top['observed'])} {top['direction']} its training range "
            f"{_fmt(top['expected_low'])} to {_fmt(top['expected_high'])} "
            f"(z {_fmt(top['z'])}); score {_fmt(entry['score'])}"
        )
        texts.append(entry)
    return band_low, band_high, texts
