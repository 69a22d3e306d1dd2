"""Reading anomaly events: for the API, the CLI, the run report and the NAB evaluation.

Time filters select events that *overlap* the period: ``since`` keeps events that end after it,
``until`` those that start before it, so an incident that began before ``since`` and is still
going is listed. A run's events are those of the sensors it scored that overlap its window.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Select, exists, select

from shared.db.schema import anomaly_events, predictions, runs
from shared.events.model import AnomalyEvent, parse_explanation
from shared.events.tracking import newest_prediction

# Buckets returned with one event at most (an event open for days at one-minute buckets).
MAX_EVENT_BUCKETS = 5000


@dataclass(frozen=True)
class EventFilters:
    """Which events to list; ``None`` means no filter on that field."""

    device: str | None = None
    sensor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = None
    run_id: str | None = None
    min_score: float | None = None


@contextmanager
def _connection(bind: Connection | Engine) -> Iterator[Connection]:
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            yield conn
    else:
        yield bind


def _query(filters: EventFilters) -> Select:
    e = anomaly_events
    query = select(e)
    if filters.device is not None:
        query = query.where(e.c.device == filters.device)
    if filters.sensor is not None:
        query = query.where(e.c.sensor == filters.sensor)
    if filters.since is not None:
        query = query.where(e.c.end > filters.since)
    if filters.until is not None:
        query = query.where(e.c.start < filters.until)
    if filters.status is not None:
        query = query.where(e.c.status == filters.status)
    if filters.min_score is not None:
        query = query.where(e.c.peak_score >= filters.min_score)
    if filters.run_id is not None:
        scored = exists().where(
            predictions.c.run_id == filters.run_id,
            predictions.c.device == e.c.device,
            predictions.c.sensor == e.c.sensor,
        )
        query = query.join(runs, runs.c.run_id == filters.run_id).where(
            e.c.start < runs.c.window_end, e.c.end > runs.c.window_start, scored
        )
    return query


def _event(row) -> AnomalyEvent:
    return AnomalyEvent(**{k: row._mapping[k] for k in AnomalyEvent.__dataclass_fields__})


def list_events(
    bind: Connection | Engine,
    filters: EventFilters = EventFilters(),
    limit: int | None = 100,
    newest_first: bool = True,
) -> list[AnomalyEvent]:
    """Events matching ``filters``, newest onset first (or oldest first), at most ``limit``."""
    e = anomaly_events
    order = (e.c.start.desc() if newest_first else e.c.start, e.c.device, e.c.sensor)
    query = _query(filters).order_by(*order)
    if limit is not None:
        query = query.limit(limit)
    with _connection(bind) as conn:
        return [_event(row) for row in conn.execute(query)]


def events_for(
    bind: Connection | Engine,
    device: str | None = None,
    sensor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[AnomalyEvent]:
    """Every event of ``device``/``sensor`` (or all) overlapping [since, until), by onset.

    The onset (``start``) of each is the alert an operator got; the NAB evaluation reads them
    to know which rows were alarms.
    """
    filters = EventFilters(device=device, sensor=sensor, since=since, until=until)
    return list_events(bind, filters, limit=None, newest_first=False)


def run_events(bind: Connection | Engine, run_id: str) -> list[AnomalyEvent]:
    """The events of the sensors ``run_id`` scored that overlap its window, by onset."""
    return list_events(bind, EventFilters(run_id=run_id), limit=None, newest_first=False)


def get_event(bind: Connection | Engine, event_id: str) -> AnomalyEvent | None:
    with _connection(bind) as conn:
        row = conn.execute(
            select(anomaly_events).where(anomaly_events.c.event_id == event_id)
        ).one_or_none()
    return _event(row) if row else None


def event_buckets(
    bind: Connection | Engine, event: AnomalyEvent, limit: int = MAX_EVENT_BUCKETS
) -> tuple[list[dict[str, Any]], bool]:
    """Every scored bucket of the event's span (flagged or not), oldest first, as the newest
    run scored it, with its expected band and (flagged buckets) explanation; and whether the
    list was cut at ``limit``."""
    q = predictions.alias("q")
    query = (
        select(q)
        .where(
            q.c.device == event.device,
            q.c.sensor == event.sensor,
            q.c.bucket_start >= event.start,
            q.c.bucket_start < event.end,
            newest_prediction(q),
        )
        .order_by(q.c.bucket_start)
        .limit(limit + 1)
    )
    with _connection(bind) as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    for row in rows:
        row["bucket_start"] = row["bucket_start"].isoformat() + "Z"
        row["is_anomaly"] = bool(row["is_anomaly"])
        row["explanation"] = parse_explanation(row["explanation"])
    return rows[:limit], len(rows) > limit
