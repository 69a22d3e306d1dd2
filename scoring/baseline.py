"""The default detector: a robust baseline per sensor, judged by an anomaly likelihood.

Why this model (measured with NAB's official scorer, see the README's quality table): a model of
*one bucket's absolute level*, such as the reference one-class SVM, flags every level shift after
training for ever, learns the anomalies of its training span as normal, and has no idea of time
of day. The best published streaming detectors (Numenta HTM, contextOSE, ARTime) share three
ideas, which this model carries over to batch scoring:

1. **Compare with the sensor's own recent past and its seasonal self.** A bucket's level is
   compared with the median of the previous :data:`RECENT_BUCKETS` buckets, on the scale of their
   interquartile range (robust: earlier spikes in that history move neither), and, where the
   sensor has a daily pattern, with the median of the same hour of day in training. The smaller
   of the two deviations counts: a value is unusual only if neither its recent past nor its hour
   of day explains it. Level shifts are caught on the bucket they happen and become the new
   normal as the recent median follows them; a change of variability moves the deviations
   themselves. The minimum, maximum and spread are compared with their own recent past too,
   taken every :data:`OTHERS_STRIDE` buckets, for sensors whose aggregates say something the
   mean does not (:func:`compared_sensors`: not a sensor with one reading per bucket).
2. **Anomaly likelihood.** The raw deviation ``log(1 + z)`` is averaged over the last
   :data:`SHORT_BUCKETS` buckets and judged against the distribution of raw deviations the sensor
   showed in training (a Gaussian tail probability ``p``). A sensor that is always noisy thus
   stays quiet, a quiet one stays sensitive, and one threshold means the same for every sensor.
   A blatant single bucket counts on its own (:data:`SINGLE_BAR`), and the average flags only
   buckets that deviate themselves (:data:`GATE_SD`), so an excursion is flagged from its first
   bucket to its last and not after.
3. **Novelty.** A bucket whose minimum, maximum or spread leaves the range seen before (the training
   window, and buckets at least :data:`ACCEPT_BUCKETS` earlier) by more than
   :data:`NOVELTY_MARGIN` of that range is anomalous whatever its likelihood (HTM's "spatial"
   rule; a stuck sensor's spread of exactly 0 is such a bucket).

**The score** of a bucket is ``min(1, -log10(p) / 10)``: 0.5 means a tail probability of 1e-5
under the sensor's normal behaviour, 1.0 means 1e-10 or less; a novel bucket scores at least
:data:`NOVELTY_SCORE`. One sensitivity (``SENSITIVITY``, default 0.5) turns scores into flags.

**State.** The model file holds a few numbers per sensor (range, noise floor, hourly profile,
the raw deviations' mean and spread); the recent past comes from the chunk itself, which carries
the :data:`RECENT_BUCKETS` buckets before the window as context rows. So the scoring step stays
files in, files out, and the score of a bucket uses only that bucket and earlier ones (causal).
Retraining on a schedule over a trailing window keeps the state current.

Buckets are taken in order of their rows: a sensor sampled slower than the bucket simply has
fewer rows, and "the previous buckets" are its previous non-empty buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scoring.features import CONTEXT_BUCKETS
from scoring.rolling import sliding_order_statistics

RECENT_BUCKETS = CONTEXT_BUCKETS
"""History a bucket is compared with (previous non-empty buckets; chunks carry this many
buckets of time before the window)."""
SHORT_BUCKETS = 5
"""Buckets averaged for the likelihood (the bucket and the four before it): one odd bucket is
noise, a deviation that lasts is an anomaly. Sudden extremes need no averaging: the novelty rule
catches them on their own bucket."""
SINGLE_BAR = 2.0
"""A single bucket is judged on its own too, at this many times the deviation (in standard units)
the average needs: a blatant step is flagged on its first bucket, ordinary noise never."""
GATE_SD = 1.5
"""The average flags a bucket only if that bucket itself deviates at least this many standard
units: once an excursion is over, the buckets after it are not flagged for the average's tail."""
PROFILE_SLOTS = 24
"""Hour-of-day slots of the seasonal profile."""
MIN_PROFILE_DAYS = 2.0
"""Training must span this many days before a daily profile is learnt."""
SEASONAL_GAIN = 0.7
"""The profile is used when it explains the level at least this well: the spread of residuals
around it is below this share of the spread of the level itself."""
NOISE_FLOOR = 0.01
"""Smallest deviation scale, as a share of the training range: a flat stretch of history must
not turn rounding into alarms."""
OTHERS_STRIDE = 8
"""The minimum, maximum and spread are compared with the median and quartiles of the
:data:`RECENT_BUCKETS` buckets before the last bucket whose row number (from the sensor's first
row in the chunk or training series) is a multiple of this: a recent past at most this many
buckets older than the level's, still causal. Their exact sliding quartiles were half of the
scoring step's CPU; every eighth window is one ``np.sort`` of a few rows (measured: NAB and the
simulated fleets score as before, see the README). The level keeps the exact window: a stride
there delays the recent median that level shifts are judged by, and the quality gate drops."""
NOVELTY_MARGIN = 0.05
ACCEPT_BUCKETS = RECENT_BUCKETS // 2
"""A bucket outside the training range stops being novel once values like it have held this long
(the recent median, over :data:`RECENT_BUCKETS`, has moved to them by then)."""
NOVELTY_SCORE = 0.75
SCORE_DECADES = 10.0
"""``score = -log10(p) / SCORE_DECADES``: 0.5 at p = 1e-5, 1.0 at p <= 1e-10 (the convention of
Numenta's log-likelihood score, so one flag a day is rare even at one-minute buckets)."""
FEATURES: tuple[str, ...] = ("mean", "min", "max", "std", "day_fraction")
"""Inputs of the model, in column order (``day_fraction`` is derived from ``bucket_start``)."""
_IQR_TO_SIGMA = 1.349
_BLOCK = 256


@dataclass
class BaselineParams:
    """Fitted state of many sensors (arrays of length ``m``; profile ``(m, PROFILE_SLOTS)``)."""

    low: np.ndarray
    high: np.ndarray
    floor: np.ndarray
    profile: np.ndarray
    seasonal: np.ndarray
    seasonal_scale: np.ndarray
    raw_mean: np.ndarray
    raw_std: np.ndarray
    spread_low: np.ndarray
    spread_high: np.ndarray

    def take(self, index: np.ndarray) -> BaselineParams:
        return BaselineParams(*(getattr(self, f)[index] for f in _PARAM_FIELDS))


_PARAM_FIELDS = (
    "low",
    "high",
    "floor",
    "profile",
    "seasonal",
    "seasonal_scale",
    "raw_mean",
    "raw_std",
    "spread_low",
    "spread_high",
)


def _slots(day_fraction: np.ndarray) -> np.ndarray:
    return np.clip((day_fraction * PROFILE_SLOTS).astype(np.int64), 0, PROFILE_SLOTS - 1)


def _recent_deviation(
    values: np.ndarray, floor: np.ndarray, start: np.ndarray | None = None
) -> np.ndarray:
    """``|x - median| / scale`` of each bucket against the :data:`RECENT_BUCKETS` before it.

    ``scale`` is the interquartile range of those buckets as a standard deviation, at least
    ``floor``. Before a sensor's first row its first value stands in, so the first buckets
    compare with themselves (deviation 0) rather than with nothing.

    ``start`` (optional, one per sensor): the first bucket whose deviation is wanted; earlier
    buckets are not computed and come back as NaN (the ones wanted are the same as without it).
    """
    s, b = values.shape
    if start is None:
        return _recent_deviation_from(values, floor, np.zeros(s, dtype=np.intp), b)
    start = np.clip(np.asarray(start, dtype=np.intp), 0, b)
    n = b - int(start.min(initial=b))
    return _scatter(_recent_deviation_from(values, floor, start, n), start, b)


def _recent_deviation_from(
    values: np.ndarray, floor: np.ndarray, start: np.ndarray, n: int, stride: int = 1
) -> np.ndarray:
    """:func:`_recent_deviation` of buckets ``start + k`` (k < n) as an (s, n) array; cells past
    a sensor's last bucket hold its last bucket's deviation.

    ``stride`` > 1: bucket ``t`` is compared with the window before bucket ``t - t % stride``
    instead of its own (see :data:`OTHERS_STRIDE`); the windows are taken at those buckets only.
    """
    s, b = values.shape
    w = RECENT_BUCKETS
    if n == 0 or s == 0:
        return np.empty((s, n))
    if stride > 1:
        return _strided_recent_deviation(values, floor, start, n, stride)
    padded = np.concatenate([np.repeat(values[:, :1], w, axis=1), values], axis=1)
    # Bucket t's window is padded[t : t + w]: the columns from each sensor's start on, aligned
    # to column 0 (past the end: the last column, whose windows are dropped by the caller).
    padded, values = _from(padded, start, n + w - 1), _from(values, start, n)
    # The elements np.partition over sliding_window_view(padded, w)[:, :n] selects, ~8x faster.
    q_low, median, q_high = sliding_order_statistics(padded, w, (w // 4, w // 2, (3 * w) // 4), n)
    spread = (q_high - q_low) / _IQR_TO_SIGMA
    return np.abs(values - median) / np.maximum(spread, floor[:, None])


def _strided_recent_deviation(
    values: np.ndarray, floor: np.ndarray, start: np.ndarray, n: int, stride: int
) -> np.ndarray:
    """:func:`_recent_deviation_from` with the windows of every ``stride``-th bucket only."""
    s, b = values.shape
    w = RECENT_BUCKETS
    c0, c1 = int(start.min()), min(int(start.max()) + n - 1, b - 1)  # columns wanted
    first = c0 // stride
    anchors = np.arange(first, c1 // stride + 1) * stride
    # The w buckets before each anchor; before a sensor's first row its first value stands in.
    before = np.maximum(anchors[:, None] - w + np.arange(w), 0)
    ordered = np.sort(values[:, before], axis=-1)  # NaN last, as np.partition and rolling
    quartiles = ordered[..., [w // 4, w // 2, (3 * w) // 4]]
    q_low, median, q_high = np.moveaxis(quartiles[:, np.arange(c0, c1 + 1) // stride - first], 2, 0)
    scale = np.maximum((q_high - q_low) / _IQR_TO_SIGMA, floor[:, None])
    deviation = np.abs(values[:, c0 : c1 + 1] - median) / scale
    return _from(deviation, start - c0, n)


def compared_sensors(values: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Sensors (rows) whose aggregate ``values`` can deviate on its own.

    Not compared: a sensor whose aggregate equals its level in every row (one reading per
    bucket: min = max = mean; comparing it again would override the level's time-of-day
    comparison), and one whose aggregate never changes (its deviation is 0 throughout). Decided
    per sensor from its own rows, so a sensor's scores never depend on the others in its chunk.
    """
    same = (values == level).all(axis=1)
    constant = (values == values[:, :1]).all(axis=1)
    return ~(same | constant)


def _from(values: np.ndarray, start: np.ndarray, n: int) -> np.ndarray:
    """``values[i, start[i] + k]`` for k < n as an (s, n) array (the last column past the end)."""
    if not start.any():
        return values[:, :n]
    if (start == start[0]).all() and start[0] + n <= values.shape[1]:
        return values[:, start[0] : start[0] + n]
    columns = np.minimum(start[:, None] + np.arange(n), values.shape[1] - 1)
    return np.take_along_axis(values, columns, axis=1)


def _scatter(aligned: np.ndarray, start: np.ndarray, b: int) -> np.ndarray:
    """Inverse of :func:`_from`: an (s, b) array with ``out[i, start[i] + k] = aligned[i, k]``
    and NaN before each sensor's start."""
    s, n = aligned.shape
    out = np.full((s, b), np.nan)
    if not n:
        return out
    if (start == start[0]).all():
        out[:, start[0] :] = aligned[:, : b - start[0]]
        return out
    columns = start[:, None] + np.arange(n)
    inside = columns < b
    out[np.nonzero(inside)[0], columns[inside]] = aligned[inside]
    return out


def deviations(
    level: np.ndarray,
    day_fraction: np.ndarray,
    params: BaselineParams,
    others: tuple[np.ndarray, ...] = (),
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Robust deviation ``z`` of each bucket from its recent past / seasonal self.

    Parameters
    ----------
    level : ndarray of shape (s, b)
        Bucket means of ``s`` sensors in time order (context rows first).
    day_fraction : ndarray of shape (s, b)
        Time of day of each bucket start in [0, 1).
    params : BaselineParams
        State of the ``s`` sensors.
    others : tuple of ndarray of shape (s, b)
        Further aggregates (minimum, maximum, spread) compared with their own recent past:
        a spike inside a bucket moves its maximum more than its mean, a stuck sensor or a
        noise burst moves its spread and not its mean. The largest deviation counts. They are
        compared only for the sensors :func:`compared_sensors` picks, and with the recent past
        of every :data:`OTHERS_STRIDE`-th bucket.
    start : ndarray of int of shape (s,), optional
        First bucket of each sensor whose deviation is wanted: earlier buckets (context the
        caller needs only as history) are not computed and come back as NaN; the others are
        exactly the values computed without it.
    """
    s, b = level.shape
    if start is None:
        return _deviations_from(level, day_fraction, params, others, np.zeros(s, np.intp), b)
    start = np.clip(np.asarray(start, dtype=np.intp), 0, b)
    n = b - int(start.min(initial=b))
    return _scatter(_deviations_from(level, day_fraction, params, others, start, n), start, b)


def _deviations_from(
    level: np.ndarray,
    day_fraction: np.ndarray,
    params: BaselineParams,
    others: tuple[np.ndarray, ...],
    start: np.ndarray,
    n: int,
) -> np.ndarray:
    """:func:`deviations` of buckets ``start + k`` (k < n) as an (s, n) array."""
    z = _recent_deviation_from(level, params.floor, start, n)
    if params.seasonal.any():
        profile_slots = _slots(_from(day_fraction, start, n))
        expected = np.take_along_axis(params.profile, profile_slots, axis=1)
        z_seasonal = np.abs(_from(level, start, n) - expected) / params.seasonal_scale[:, None]
        z = np.where(params.seasonal[:, None], np.fmin(z, z_seasonal), z)
    for values in others:
        # Which sensors: decided over every bucket, whatever `start` (it must not depend on it).
        rows = np.flatnonzero(compared_sensors(values, level))
        if len(rows) == len(values):
            z = np.fmax(z, _recent_deviation_from(values, params.floor, start, n, OTHERS_STRIDE))
        elif len(rows):
            other = _recent_deviation_from(
                values[rows], params.floor[rows], start[rows], n, OTHERS_STRIDE
            )
            z[rows] = np.fmax(z[rows], other)
    return z


def _seen_before(values: np.ndarray, trained: np.ndarray, reduce) -> np.ndarray:
    """Per bucket, the extreme (``np.maximum``/``np.minimum``) of the training value and every
    bucket at least :data:`ACCEPT_BUCKETS` before it."""
    s, b = values.shape
    seen = np.repeat(trained[:, None], b, axis=1)
    if b > ACCEPT_BUCKETS:
        running = reduce.accumulate(values, axis=1)[:, : b - ACCEPT_BUCKETS]
        seen[:, ACCEPT_BUCKETS:] = reduce(seen[:, ACCEPT_BUCKETS:], running)
    return seen


def _novel(low: np.ndarray, high: np.ndarray, spread: np.ndarray, p: BaselineParams) -> np.ndarray:
    """Buckets whose extremes or spread leave the range seen before by more than the margin.

    "Seen before" is the training window and the buckets at least :data:`ACCEPT_BUCKETS` before:
    an excursion stays novel while it is young (every bucket of a short anomaly is flagged), and a
    new level that has held that long is accepted, as the recent median has moved to it by then.
    """
    return _novel_from(low, high, spread, p, np.zeros(len(low), dtype=np.intp), low.shape[1])


def _novel_from(
    low: np.ndarray,
    high: np.ndarray,
    spread: np.ndarray,
    p: BaselineParams,
    start: np.ndarray,
    n: int,
) -> np.ndarray:
    """:func:`_novel` of buckets ``start + k`` (k < n) as an (s, n) array (the extremes seen
    before run over every bucket)."""
    margin = (NOVELTY_MARGIN * (p.high - p.low))[:, None]
    spread_margin = (NOVELTY_MARGIN * (p.spread_high - p.spread_low))[:, None]

    def seen(values, trained, reduce):
        return _from(_seen_before(values, trained, reduce), start, n)

    high_, low_, spread_ = (_from(values, start, n) for values in (high, low, spread))
    return (
        (high_ > seen(high, p.high, np.maximum) + margin)
        | (low_ < seen(low, p.low, np.minimum) - margin)
        | (spread_ > seen(spread, p.spread_high, np.maximum) + spread_margin)
        | (spread_ < seen(spread, p.spread_low, np.minimum) - spread_margin)
    )


def _short_mean(raw: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """Mean of each bucket's raw deviation and the :data:`SHORT_BUCKETS` - 1 before it (fewer
    at a sensor's first buckets). ``raw`` may start at bucket ``first`` of each sensor (its
    first columns then lack earlier terms and are not meant to be used).

    A plain sum of the window's terms, not differences of a running sum, so a bucket's mean is
    the same however many buckets before it were computed.
    """
    k = SHORT_BUCKETS
    total = raw.copy()
    for lag in range(1, k):
        total[:, lag:] += raw[:, :-lag]
    bucket = np.arange(raw.shape[1]) if first is None else first[:, None] + np.arange(raw.shape[1])
    return total / np.minimum(bucket + 1, k)


def score(X: np.ndarray, params: BaselineParams, n_context: np.ndarray | None = None) -> np.ndarray:
    """Graded anomaly scores in [0, 1] of ``s`` sensors over ``b`` buckets.

    Parameters
    ----------
    X : ndarray of shape (s, b, 5)
        :data:`FEATURES` of each bucket, in time order; the first rows may be context.
    params : BaselineParams
        State of the ``s`` sensors.
    n_context : ndarray of int of shape (s,), optional
        Context rows at the start of each sensor (history before the window, whose scores
        nobody reads). Their scores are not computed (NaN); the other rows' are exactly the
        scores without it. Their raw deviations are needed only for the :data:`SHORT_BUCKETS`
        average of the first window rows, and the novelty rule needs their values only, so
        the sliding quartiles (most of the time) run over the window and 4 rows before it.
    """
    from scipy.special import log_ndtr  # scipy comes with scikit-learn; imported when used

    s, b = X.shape[:2]
    out = np.empty((s, b))
    if n_context is None:
        wanted = np.zeros(s, dtype=np.intp)
    else:
        wanted = np.clip(np.asarray(n_context, dtype=np.intp), 0, b)
        if wanted.shape != (s,):
            raise ValueError(f"n_context has shape {wanted.shape}, expected ({s},)")
    for block in range(0, s, _BLOCK):
        part = slice(block, block + _BLOCK)
        p = params.take(np.arange(s)[part])
        level, low, high, spread, day = (X[part, :, i] for i in range(5))
        start = wanted[part]
        first = np.maximum(start - (SHORT_BUCKETS - 1), 0)  # the short mean's earliest term
        n = b - int(first.min(initial=b))
        raw = np.log1p(_deviations_from(level, day, p, (low, high, spread), first, n))
        standard = (_short_mean(raw, first) - p.raw_mean[:, None]) / p.raw_std[:, None]
        single = (raw - p.raw_mean[:, None]) / p.raw_std[:, None]
        standard = np.where(single >= GATE_SD, standard, np.minimum(standard, single))
        standard = np.maximum(standard, single / SINGLE_BAR)
        log10_p = log_ndtr(-standard) / np.log(10.0)
        graded = np.clip(-log10_p / SCORE_DECADES, 0.0, 1.0)
        novel = _novel_from(low, high, spread, p, first, n)
        graded = np.where(novel, np.maximum(graded, NOVELTY_SCORE), graded)
        result = _scatter(graded, first, b)
        if start.any():
            result[np.arange(b)[None, :] < start[:, None]] = np.nan  # context: not scored
        out[part] = result
    return out


class RobustBaseline:
    """Scikit-learn style estimator for one sensor: ``fit(X)`` on its training buckets.

    ``X`` has the :data:`FEATURES` columns and its rows in time order (training queries sort
    by bucket). Fitted state is in :attr:`params_` (a one-sensor :class:`BaselineParams`).
    """

    graded = True
    """Its scores are already calibrated in [0, 1]: no threshold calibration afterwards."""

    def get_params(self, deep: bool = True) -> dict:
        return {}

    def set_params(self, **params) -> RobustBaseline:
        return self

    def fit(self, X: np.ndarray, y=None, flagged: np.ndarray | None = None) -> RobustBaseline:
        """Fit on one sensor's training buckets ``X`` (n, 5) in time order.

        ``flagged`` marks buckets an earlier run flagged: they stay in the sequence (the recent
        medians and the distribution of deviations need it; leaving them out measurably makes
        the likelihood over-sensitive, since every flag then narrows it), but the range the
        novelty rule calls normal is taken without them, so an anomaly in the training span
        does not widen it.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(FEATURES):
            raise ValueError(f"RobustBaseline needs columns {FEATURES}, got shape {X.shape}")
        level, low, high, spread, day = X.T
        normal = np.ones(len(X), dtype=bool) if flagged is None else ~np.asarray(flagged, bool)
        if normal.sum() < max(2, len(X) // 2):
            normal[:] = True  # mostly flagged: no basis for a range without them
        lo, hi = float(np.min(low[normal])), float(np.max(high[normal]))
        floor = max(NOISE_FLOOR * (hi - lo), 1e-9 * max(1.0, abs(hi), abs(lo)))
        profile = np.full(PROFILE_SLOTS, float(np.median(level)))
        seasonal, seasonal_scale = False, floor
        span_days = _span_days(day)
        if span_days >= MIN_PROFILE_DAYS:
            slots = _slots(day)
            for slot in np.unique(slots):
                profile[slot] = np.median(level[slots == slot])
            filled = np.isin(np.arange(PROFILE_SLOTS), slots)
            if not filled.all():  # slots never seen: the nearest seen slot's value
                seen = np.flatnonzero(filled)
                nearest = seen[np.argmin(np.abs(np.arange(PROFILE_SLOTS)[:, None] - seen), axis=1)]
                profile = profile[nearest]
            residual = level - profile[slots]
            spread_residual = _robust_spread(residual)
            spread_level = _robust_spread(level)
            seasonal = bool(spread_residual < SEASONAL_GAIN * spread_level)
            seasonal_scale = max(spread_residual, floor)
        params = BaselineParams(
            low=np.array([lo]),
            high=np.array([hi]),
            floor=np.array([floor]),
            profile=profile[None, :],
            seasonal=np.array([seasonal]),
            seasonal_scale=np.array([seasonal_scale]),
            raw_mean=np.zeros(1),
            raw_std=np.ones(1),
            spread_low=np.array([float(np.min(spread[normal]))]),
            spread_high=np.array([float(np.max(spread[normal]))]),
        )
        others = (low[None, :], high[None, :], spread[None, :])
        raw = np.log1p(deviations(level[None, :], day[None, :], params, others))[0]
        raw = raw[min(RECENT_BUCKETS, len(raw) // 2) :]  # past the warm-up of the recent median
        params.raw_mean[0] = float(np.mean(raw))
        params.raw_std[0] = float(np.std(raw)) + 1e-6
        self.params_ = params
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        """Scores of one sensor's buckets ``X`` (n, 5) in time order."""
        return score(np.asarray(X, dtype=np.float64)[None], self.params_)[0]

    def summary(self) -> dict:
        p = self.params_
        return {
            "low": float(p.low[0]),
            "high": float(p.high[0]),
            "floor": float(p.floor[0]),
            "seasonal": bool(p.seasonal[0]),
            "seasonal_scale": float(p.seasonal_scale[0]),
            "raw_mean": float(p.raw_mean[0]),
            "raw_std": float(p.raw_std[0]),
        }


def _robust_spread(values: np.ndarray) -> float:
    q25, q75 = np.percentile(values, [25, 75])
    return float(q75 - q25) / _IQR_TO_SIGMA


def _span_days(day_fraction: np.ndarray) -> float:
    """Days covered by a time-ordered sequence, from its times of day (wraps count days)."""
    if len(day_fraction) < 2:
        return 0.0
    wraps = int(np.sum(np.diff(day_fraction) < 0))
    return wraps + float(day_fraction[-1] - day_fraction[0])


def stack_params(models: list[BaselineParams]) -> BaselineParams:
    """One :class:`BaselineParams` of many one-sensor states."""
    return BaselineParams(*(np.concatenate([getattr(m, f) for m in models]) for f in _PARAM_FIELDS))


PARAM_FIELDS = _PARAM_FIELDS
