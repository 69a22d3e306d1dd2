"""Operator feedback on anomaly events, and what it changes next.

An operator says of an event (``POST /api/anomalies/{event_id}/feedback``, ``feedback give``):

``confirmed``
    a real anomaly. Counts toward the operator's precision figure (:func:`summary`).
``false_alarm``
    not an anomaly. Two consequences, so the same pattern is not flagged again:
    *training* treats the event's span as normal (:func:`false_alarm_spans` lists the spans; the
    trainer keeps those buckets while it excludes other previously flagged ones), and the
    sensor's **sensitivity** is raised to just above the alarm's peak score
    (``peak + SENSITIVITY_STEP``, at most :data:`MAX_SENSITIVITY`, never lowered by this):
    preparation writes the sensor's sensitivity into each chunk row (column ``sensitivity``)
    and the scoring step flags ``score >= sensitivity`` with it.
``expected``
    an anomaly, but a known one (maintenance, a test): no alert for that sensor over the given
    span (default: the event's span), now or for events that come later in it.

Every verdict is kept (``anomaly_feedback``); the latest one of an event is its verdict. A
verdict copies the event's sensor, span and peak, so it survives a recompute that re-keys the
event (an onset that moved).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
from sqlalchemy import Connection, and_, insert, or_, select, update

from shared.clock import utcnow
from shared.db.schema import anomaly_feedback, sensor_sensitivity
from shared.events.model import AnomalyEvent

CONFIRMED, FALSE_ALARM, EXPECTED = "confirmed", "false_alarm", "expected"
VERDICTS = (CONFIRMED, FALSE_ALARM, EXPECTED)
# A false alarm raises its sensor's sensitivity to just above the alarm's peak, at most this:
# past it only blatant buckets would still be flagged.
MAX_SENSITIVITY = 0.95
SENSITIVITY_STEP = 0.01
SENSITIVITY_COLUMN = "sensitivity"  # the optional chunk column (scoring.features)
MAX_COMMENT = 4000
MAX_AUTHOR = 200
IN_BATCH = 500


class FeedbackError(ValueError):
    """Invalid feedback; the message says what to fix."""


@dataclass(frozen=True)
class Feedback:
    feedback_id: int
    event_id: str
    device: str
    sensor: str
    event_start: datetime
    event_end: datetime
    peak_score: float
    verdict: str
    comment: str | None
    author: str | None
    span_start: datetime
    span_end: datetime
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat() + "Z"
        return out


def _row(row) -> Feedback:
    return Feedback(**{k: row._mapping[k] for k in Feedback.__dataclass_fields__})


def give_feedback(
    conn: Connection,
    event: AnomalyEvent,
    verdict: str,
    comment: str | None = None,
    author: str | None = None,
    span: tuple[datetime, datetime] | None = None,
    default_sensitivity: float = 0.5,
    now: datetime | None = None,
) -> Feedback:
    """Store a verdict on ``event`` and apply what it changes (in ``conn``'s transaction)."""
    if verdict not in VERDICTS:
        raise FeedbackError(f"verdict must be one of {', '.join(VERDICTS)}")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
        raise FeedbackError(f"comment must be a string of at most {MAX_COMMENT} characters")
    if author is not None and (not isinstance(author, str) or len(author) > MAX_AUTHOR):
        raise FeedbackError(f"author must be a string of at most {MAX_AUTHOR} characters")
    from shared.alerts.rules import storable

    for name, value in (("comment", comment), ("author", author)):
        if value is not None and not storable(value):
            raise FeedbackError(f"{name} holds a NUL character or is not valid Unicode")
    if span is not None:
        if verdict != EXPECTED:
            raise FeedbackError("a span is given with verdict 'expected' only")
        if not span[0] < span[1]:
            raise FeedbackError("the span's start must be before its end")
        if span[1] - span[0] > timedelta(days=366):
            raise FeedbackError("the span must be at most a year long")
    start, end = span or (event.start, event.end)
    now = now or utcnow()
    result = conn.execute(
        insert(anomaly_feedback).values(
            event_id=event.event_id,
            device=event.device,
            sensor=event.sensor,
            event_start=event.start,
            event_end=event.end,
            peak_score=event.peak_score,
            verdict=verdict,
            comment=comment,
            author=author,
            span_start=start,
            span_end=end,
            created_at=now,
        )
    )
    if verdict == FALSE_ALARM:
        raise_sensitivity(conn, event, default_sensitivity, now)
    (feedback_id,) = result.inserted_primary_key
    row = conn.execute(
        select(anomaly_feedback).where(anomaly_feedback.c.feedback_id == feedback_id)
    ).one()
    return _row(row)


def raise_sensitivity(
    conn: Connection, event: AnomalyEvent, default: float, now: datetime
) -> float:
    """Raise the event's sensor's sensitivity above its peak score (never lower it)."""
    key = and_(
        sensor_sensitivity.c.device == event.device, sensor_sensitivity.c.sensor == event.sensor
    )
    current = conn.execute(select(sensor_sensitivity.c.sensitivity).where(key)).scalar()
    wanted = min(MAX_SENSITIVITY, event.peak_score + SENSITIVITY_STEP)
    value = max(wanted, current if current is not None else default)
    reason = (
        f"false alarm {event.event_id} (peak score {event.peak_score:.3f}, "
        f"{event.start:%Y-%m-%d %H:%M}Z): flagged from {value:.3f} on"
    )
    if current is None:
        conn.execute(
            insert(sensor_sensitivity).values(
                device=event.device,
                sensor=event.sensor,
                sensitivity=value,
                reason=reason,
                event_id=event.event_id,
                updated_at=now,
            )
        )
    elif value != current:
        conn.execute(
            update(sensor_sensitivity)
            .where(key)
            .values(sensitivity=value, reason=reason, event_id=event.event_id, updated_at=now)
        )
    return value


def feedback_for(conn: Connection, event_ids: Sequence[str]) -> dict[str, list[Feedback]]:
    """Each event's feedback, oldest first (the last is its verdict)."""
    out: dict[str, list[Feedback]] = defaultdict(list)
    ids = list(event_ids)
    for i in range(0, len(ids), IN_BATCH):
        rows = conn.execute(
            select(anomaly_feedback)
            .where(anomaly_feedback.c.event_id.in_(ids[i : i + IN_BATCH]))
            .order_by(anomaly_feedback.c.created_at, anomaly_feedback.c.feedback_id)
        )
        for row in rows:
            out[row.event_id].append(_row(row))
    return dict(out)


def _latest_verdicts(conn: Connection, *conditions) -> list[Feedback]:
    """The latest feedback of each event matching ``conditions``."""
    f = anomaly_feedback
    later = f.alias("later")
    newer = (
        select(later.c.feedback_id)
        .where(
            later.c.event_id == f.c.event_id,
            or_(
                later.c.created_at > f.c.created_at,
                and_(later.c.created_at == f.c.created_at, later.c.feedback_id > f.c.feedback_id),
            ),
        )
        .exists()
    )
    rows = conn.execute(select(f).where(~newer, *conditions).order_by(f.c.span_start))
    return [_row(r) for r in rows]


def _sensor_filter(sensors: Iterable[tuple[str, str]] | None):
    if sensors is None:
        return []
    pairs = list(sensors)
    if not pairs:
        return [anomaly_feedback.c.device.is_(None)]  # nothing matches
    f = anomaly_feedback
    return [or_(*(and_(f.c.device == d, f.c.sensor == s) for d, s in pairs))]


def false_alarm_spans(
    conn: Connection,
    sensors: Iterable[tuple[str, str]] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[tuple[str, str, datetime, datetime]]:
    """(device, sensor, start, end) of events whose verdict is ``false_alarm``, overlapping
    ``[start, end)``, for ``sensors`` (``None``: all).

    Training keeps these buckets as normal while it leaves out other previously flagged ones.
    """
    f = anomaly_feedback
    conditions = [f.c.verdict == FALSE_ALARM, *_sensor_filter(sensors)]
    if start is not None:
        conditions.append(f.c.event_end > start)
    if end is not None:
        conditions.append(f.c.event_start < end)
    found = _latest_verdicts(conn, *conditions)
    return [(x.device, x.sensor, x.event_start, x.event_end) for x in found]


def expected_spans(
    conn: Connection, sensors: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], list[tuple[datetime, datetime]]]:
    """Spans over which the operator said anomalies of each sensor are expected."""
    pairs = list(sensors)
    out: dict[tuple[str, str], list[tuple[datetime, datetime]]] = defaultdict(list)
    for i in range(0, len(pairs), 200):
        conditions = [anomaly_feedback.c.verdict == EXPECTED, *_sensor_filter(pairs[i : i + 200])]
        for x in _latest_verdicts(conn, *conditions):
            out[(x.device, x.sensor)].append((x.span_start, x.span_end))
    return dict(out)


def sensitivity_overrides(conn: Connection) -> dict[tuple[str, str], float]:
    """Per-sensor sensitivities set by feedback (few rows: one per sensor with a false alarm)."""
    rows = conn.execute(
        select(
            sensor_sensitivity.c.device,
            sensor_sensitivity.c.sensor,
            sensor_sensitivity.c.sensitivity,
        )
    )
    return {(d, s): float(v) for d, s, v in rows}


def list_sensitivities(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(sensor_sensitivity).order_by(
            sensor_sensitivity.c.device, sensor_sensitivity.c.sensor
        )
    )
    out = []
    for row in rows:
        item = dict(row._mapping)
        item["updated_at"] = item["updated_at"].isoformat() + "Z"
        out.append(item)
    return out


def with_sensitivity(
    part: pa.Table, overrides: dict[tuple[str, str], float], default: float
) -> pa.Table:
    """``part`` (a chunk) with a float ``sensitivity`` column when a sensor of it has an
    override (others get ``default``); unchanged otherwise."""
    if not overrides or part.num_rows == 0:
        return part
    devices = part.column("device").to_pylist()
    sensors = part.column("sensor").to_pylist()
    if not any(k in overrides for k in set(zip(devices, sensors, strict=True))):
        return part
    values = [overrides.get(k, default) for k in zip(devices, sensors, strict=True)]
    return part.append_column(SENSITIVITY_COLUMN, pa.array(values, pa.float64()))


# ------------------------------------------------------------------ the operator's precision

PERIODS = {"day": 1, "week": 7}


def summary(
    conn: Connection,
    device: str | None = None,
    sensor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    period: str = "week",
) -> dict[str, Any]:
    """Verdicts per sensor and for the fleet, and the fleet's shares per period of event onset.

    ``confirmed_share`` = confirmed / (confirmed + false_alarm): the operator's own precision
    figure; ``false_alarm_share`` its complement; ``expected`` is counted apart (neither).
    """
    if period not in PERIODS:
        raise FeedbackError(f"period must be one of {', '.join(PERIODS)}")
    f = anomaly_feedback
    conditions = []
    if device is not None:
        conditions.append(f.c.device == device)
    if sensor is not None:
        conditions.append(f.c.sensor == sensor)
    if since is not None:
        conditions.append(f.c.event_start >= since)
    if until is not None:
        conditions.append(f.c.event_start < until)
    verdicts = _latest_verdicts(conn, *conditions)
    per_sensor: dict[tuple[str, str], Counter] = defaultdict(Counter)
    per_period: dict[datetime, Counter] = defaultdict(Counter)
    fleet: Counter = Counter()
    days = PERIODS[period]
    epoch = datetime(2000, 1, 3)  # a Monday: weeks start on Mondays
    for v in verdicts:
        per_sensor[(v.device, v.sensor)][v.verdict] += 1
        fleet[v.verdict] += 1
        offset = (v.event_start - epoch).days // days * days
        per_period[epoch + timedelta(days=offset)][v.verdict] += 1
    return {
        "fleet": _shares(fleet),
        "sensors": [
            {"device": d, "sensor": s, **_shares(c)} for (d, s), c in sorted(per_sensor.items())
        ],
        "period": period,
        "over_time": [
            {"period_start": p.isoformat() + "Z", **_shares(c)}
            for p, c in sorted(per_period.items())
        ],
    }


def _shares(counts: Counter) -> dict[str, Any]:
    judged = counts[CONFIRMED] + counts[FALSE_ALARM]
    return {
        **{v: int(counts[v]) for v in VERDICTS},
        "confirmed_share": round(counts[CONFIRMED] / judged, 4) if judged else None,
        "false_alarm_share": round(counts[FALSE_ALARM] / judged, 4) if judged else None,
    }


def chunk_with_sensitivity(engine, part: pa.Table, default: float) -> pa.Table:
    """Preparation's hook: ``part`` with the per-sensor ``sensitivity`` column when one of its
    sensors has an override (one small query: overrides exist only where feedback set them)."""
    with engine.connect() as conn:
        overrides = sensitivity_overrides(conn)
    return with_sensitivity(part, overrides, default)
