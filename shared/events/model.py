"""The anomaly event record, its stable id, and grouping flagged buckets into events.

Pure functions over arrays: no SQL here, so the rule that makes one alarm out of many flagged
buckets is tested on its own and is the same wherever it runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

OPEN, CLOSED = "open", "closed"
STATUSES = (OPEN, CLOSED)

# Columns of the flagged-bucket frame that segment() groups.
FLAG_COLUMNS = ("device", "sensor", "bucket_start", "score", "run_id")


@dataclass(frozen=True)
class AnomalyEvent:
    """One incident of one sensor: flagged buckets fewer than ``EVENT_GAP_BUCKETS`` unflagged
    buckets apart.

    Attributes
    ----------
    event_id:
        Stable id: a hash of device, sensor and onset (:func:`event_id_for`).
    start:
        The onset, the first flagged bucket's start (naive UTC). The alert is raised here.
    end:
        End of the last flagged bucket (``last_bucket_start`` + one bucket).
    n_buckets:
        Number of flagged buckets in the event (not its span in buckets).
    onset_score, peak_score, peak_bucket:
        The onset bucket's score; the highest score and the first bucket that has it.
    status:
        ``open`` while a flag in the sensor's next bucket would still join the event (its last
        flag is fewer than ``EVENT_GAP_BUCKETS`` buckets before the sensor's latest scored
        bucket), else ``closed``.
    first_run_id, last_run_id:
        The runs whose predictions hold the onset and the last flagged bucket.
    explanation:
        Why: the explanation of the peak bucket's prediction (``scoring.explain``: the
        comparison or feature that was abnormal, its direction, observed value, expected range
        and the model version that judged it), or ``None`` when that prediction has none
        (scored before explanations existed). Stored as JSON text, held here as a dict.
    """

    event_id: str
    device: str
    sensor: str
    start: datetime
    end: datetime
    last_bucket_start: datetime
    n_buckets: int
    onset_score: float
    peak_score: float
    peak_bucket: datetime
    status: str
    first_run_id: str
    last_run_id: str
    created_at: datetime | None = None
    updated_at: datetime | None = None
    explanation: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # Rows read from SQL carry the explanation as JSON text.
        if isinstance(self.explanation, str):
            object.__setattr__(self, "explanation", parse_explanation(self.explanation))

    def explanation_text(self) -> str | None:
        """The explanation as stored: canonical JSON text (sorted keys), or None."""
        return explanation_text(self.explanation)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: timestamps as ISO-8601 with ``Z``."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat() + "Z"
        return out


def parse_explanation(text: str | None) -> dict[str, Any] | None:
    """A stored explanation (JSON text) as a dict; None for null or for text that is not a JSON
    object (recording refuses such files, so only a hand-edited row can have one)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def explanation_text(explanation: dict[str, Any] | None) -> str | None:
    """Canonical JSON text of an explanation (so an unchanged one compares equal)."""
    if explanation is None:
        return None
    return json.dumps(explanation, sort_keys=True, separators=(",", ":"))


def event_id_for(device: str, sensor: str, start: datetime) -> str:
    """The stable id of the event of ``device``/``sensor`` with onset ``start``.

    A recompute of the same flags gives the same id, so a redelivered chunk or a re-run updates
    the event instead of adding one; later work (alerts, feedback) can hold on to it.
    """
    key = f"{device}\x1f{sensor}\x1f{start:%Y-%m-%dT%H:%M:%S.%f}"
    return "ev-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def segment(
    flags: pd.DataFrame,
    gap_buckets: int,
    bucket_seconds: int,
    latest_scored: dict[tuple[str, str], datetime],
    rest_buckets: int | None = None,
) -> list[AnomalyEvent]:
    """Group flagged buckets into events, vectorised over many sensors.

    Parameters
    ----------
    flags:
        One row per flagged bucket with :data:`FLAG_COLUMNS` (at most one row per device,
        sensor and bucket), in any order; an optional ``explanation`` column (JSON text or
        None) gives each event the explanation of its peak bucket.
    gap_buckets:
        ``EVENT_GAP_BUCKETS``: two flags of a sensor ``d`` buckets apart belong to one event
        when ``d <= gap_buckets``, i.e. fewer than ``gap_buckets`` unflagged buckets lie between.
    rest_buckets:
        ``EVENT_REST_BUCKETS``: an event spans at most this many buckets from its onset; a flag
        at or after ``onset + rest_buckets`` opens a new event (a new alert), however close it
        is to the previous flag. ``None``: no limit. The onset is the alert, so this is the
        rest period after an alert during which the same sensor raises none.
    bucket_seconds:
        ``BUCKET_SECONDS``, the bucket length.
    latest_scored:
        The latest scored bucket start of each sensor, for the open/closed status; a sensor
        missing here counts its own last flag as the latest scored bucket.

    Returns
    -------
    list of AnomalyEvent
        Ordered by device, sensor and start; ``created_at``/``updated_at`` are left ``None``.
    """
    if flags.empty:
        return []
    explained = "explanation" in flags.columns
    columns = [*FLAG_COLUMNS, "explanation"] if explained else list(FLAG_COLUMNS)
    frame = flags.loc[:, columns].sort_values(["device", "sensor", "bucket_start"])
    frame = frame.reset_index(drop=True)
    times = pd.to_datetime(frame["bucket_start"]).to_numpy(dtype="datetime64[us]")
    devices = frame["device"].to_numpy(dtype=object)
    sensors = frame["sensor"].to_numpy(dtype=object)
    bucket = np.timedelta64(int(bucket_seconds) * 1_000_000, "us")
    gap = bucket * int(gap_buckets)
    new = np.ones(len(frame), dtype=bool)
    new[1:] = (devices[1:] != devices[:-1]) | (sensors[1:] != sensors[:-1]) | (np.diff(times) > gap)
    if rest_buckets is not None:
        # The rest span counts from each event's onset, which depends on the previous split:
        # a walk over the flags (only flagged buckets come here, so they are few).
        rest = bucket * int(rest_buckets)
        onset = times[0]
        for i in range(1, len(new)):
            if new[i] or times[i] - onset >= rest:
                new[i] = True
                onset = times[i]
    starts = np.flatnonzero(new)
    stops = np.append(starts[1:], len(frame))
    scores = frame["score"].to_numpy(dtype=float)
    runs = frame["run_id"].to_numpy(dtype=object)
    texts = frame["explanation"].to_numpy(dtype=object) if explained else None
    # Each event's maximum, and the first position in the event that reaches it.
    peaks = np.maximum.reduceat(scores, starts)
    segment_of = np.cumsum(new) - 1
    positions = np.arange(len(frame))
    peak_pos = np.minimum.reduceat(
        np.where(scores >= peaks[segment_of], positions, len(frame)), starts
    )
    gap_td = timedelta(seconds=int(bucket_seconds) * int(gap_buckets))
    rest_td = timedelta(seconds=int(bucket_seconds) * int(rest_buckets)) if rest_buckets else None
    bucket_td = timedelta(seconds=int(bucket_seconds))
    events = []
    for i, (lo, hi) in enumerate(zip(starts, stops, strict=True)):
        device, sensor = devices[lo], sensors[lo]
        start = _py(times[lo])
        last = _py(times[hi - 1])
        latest = max(latest_scored.get((device, sensor), last), last)
        events.append(
            AnomalyEvent(
                event_id=event_id_for(device, sensor, start),
                device=device,
                sensor=sensor,
                start=start,
                end=last + bucket_td,
                last_bucket_start=last,
                n_buckets=int(hi - lo),
                onset_score=float(scores[lo]),
                peak_score=float(peaks[i]),
                peak_bucket=_py(times[peak_pos[i]]),
                status=OPEN if is_open(start, last, latest, gap_td, rest_td, bucket_td) else CLOSED,
                first_run_id=str(runs[lo]),
                last_run_id=str(runs[hi - 1]),
                explanation=_text_or_none(texts[peak_pos[i]]) if explained else None,
            )
        )
    return events


def is_open(
    start: datetime,
    last: datetime,
    latest: datetime,
    gap: timedelta,
    rest: timedelta | None,
    bucket: timedelta,
) -> bool:
    """Whether a flag in the bucket after ``latest`` (the sensor's latest scored bucket) would
    still join the event that began at ``start`` and was last flagged at ``last``."""
    following = latest + bucket
    return following - last <= gap and (rest is None or following - start < rest)


def _text_or_none(value) -> str | None:
    return value if isinstance(value, str) else None  # pandas may hold a null as NaN


def _py(value: np.datetime64) -> datetime:
    return pd.Timestamp(value).to_pydatetime()
