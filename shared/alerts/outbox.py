"""The alert outbox: notifications decided in the recording transaction, sent after it commits.

:func:`enqueue_for_chunk` runs in the transaction that records a chunk's predictions, right
after ``shared.events.update_events_for_chunk``. It looks at the events of the chunk's sensors
that this transaction changed (``updated_at`` at or after the mark taken before the events
step) and inserts the notifications they call for, one row per (event, state, target):

* ``opened`` when the event first passes its sensor's rule (:mod:`.rules`) and no ``expected``
  feedback covers it;
* ``updated:<severity>`` when an announced event's peak score reaches a higher severity band
  (``major`` at 0.75, ``critical`` at 0.95) than it was announced with: an escalation;
* ``closed`` when an announced event closes, or disappears (a re-run cleared its flags or
  moved its onset: ``status`` ``withdrawn``).

The row's id is a hash of (event, state, target), inserted if absent: a redelivered blob, a
re-run or a concurrent recording of the same event inserts nothing new, so each receiver is
told each state change once. Its payload is the CloudEvent's ``data`` as of that state.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, exists, select

from shared.clock import utcnow
from shared.db.dialects import insert_if_absent
from shared.db.schema import alert_outbox, anomaly_events, predictions
from shared.events.model import CLOSED, AnomalyEvent
from shared.settings import AlertSettings, Settings

OPENED, UPDATED, CLOSED_STATE = "opened", "updated", "closed"
PENDING, SENT, FAILED = "pending", "sent", "failed"
STATUSES = (PENDING, SENT, FAILED)
# Severity bands of an event's peak score (0.5 is a tail probability of 1e-5 for the default
# detector; 0.95 is far beyond anything normal): an escalation is a move to a higher band.
SEVERITIES = (("critical", 0.95), ("major", 0.75), ("minor", 0.0))
RANK = {"minor": 0, "major": 1, "critical": 2}
EVENT_TYPES = {
    OPENED: "sensors.anomaly.opened",
    UPDATED: "sensors.anomaly.updated",
    CLOSED_STATE: "sensors.anomaly.closed",
}
EVENTGRID_TARGET = "eventgrid"


def severity_of(score: float) -> str:
    return next(name for name, floor in SEVERITIES if score >= floor)


def webhook_target(url: str) -> str:
    """The outbox target id of a webhook URL (the URL itself may hold a token: not stored)."""
    return "webhook-" + hashlib.sha256(url.encode()).hexdigest()[:16]


def targets(alerts: AlertSettings) -> dict[str, str | None]:
    """Target id -> webhook URL (``None`` for Event Grid), as configured now."""
    out: dict[str, str | None] = {}
    if alerts.eventgrid_endpoint:
        out[EVENTGRID_TARGET] = None
    for url in alerts.webhook_urls:
        out[webhook_target(url)] = url
    return out


def notification_id(event_id: str, state: str, target: str) -> str:
    key = f"{event_id}\x1f{state}\x1f{target}"
    return "al-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def base_type(state: str) -> str:
    return state.split(":", 1)[0]


def event_data(
    event: AnomalyEvent,
    state: str,
    run_id: str | None,
    base_url: str,
    explanation: Any = None,
) -> dict[str, Any]:
    """The CloudEvent ``data`` of a notification (JSON-ready)."""
    shown = event.as_dict()
    report_run = run_id or event.last_run_id
    return {
        "event_id": event.event_id,
        "state": state,
        "device": event.device,
        "sensor": event.sensor,
        "start": shown["start"],
        "end": shown["end"],
        "status": event.status,
        "n_buckets": event.n_buckets,
        "peak_score": event.peak_score,
        "peak_bucket": shown["peak_bucket"],
        "severity": severity_of(event.peak_score),
        "run_id": report_run,
        "report_url": f"{base_url}/api/runs/{report_run}/report",
        "event_url": f"{base_url}/api/anomalies/{event.event_id}",
        # Why the detector flagged it: the event's peak bucket explanation (scoring.explain);
        # null for predictions scored before explanations existed.
        "explanation": explanation,
    }


@dataclass
class Enqueued:
    """What one recording added to the outbox."""

    notifications: int = 0
    suppressed: int = 0


def _chunk_sensors(run_id: str, chunk_id: str):
    return (
        select(predictions.c.device, predictions.c.sensor)
        .where(predictions.c.run_id == run_id, predictions.c.chunk_id == chunk_id)
        .distinct()
        .subquery("chunk")
    )


def changed_events(conn: Connection, run_id: str, chunk_id: str, since: datetime) -> list:
    """Rows of the events of the chunk's sensors changed at or after ``since``."""
    chunk = _chunk_sensors(run_id, chunk_id)
    e = anomaly_events
    return conn.execute(
        select(e)
        .join(chunk, and_(e.c.device == chunk.c.device, e.c.sensor == chunk.c.sensor))
        .where(e.c.updated_at >= since)
    ).all()


def _event(row) -> AnomalyEvent:
    return AnomalyEvent(**{k: row._mapping[k] for k in AnomalyEvent.__dataclass_fields__})


def _explanation(row) -> Any:
    """The event's explanation, if the events table has one (JSON text or a value)."""
    value = row._mapping.get("explanation") if "explanation" in anomaly_events.c else None
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def enqueue_for_chunk(
    conn: Connection, settings: Settings, run_id: str, chunk_id: str, since: datetime
) -> Enqueued:
    """Insert the notifications the chunk's event changes call for (see the module doc)."""
    from shared.alerts.rules import RuleBook
    from shared.feedback.service import expected_spans

    result = Enqueued()
    where = targets(settings.alerts)
    if not where:
        return result
    rows = changed_events(conn, run_id, chunk_id, since)
    now = utcnow()
    book = RuleBook.load(conn, settings.sensitivity)
    events = [(_event(r), _explanation(r)) for r in rows]
    sensors = sorted({(e.device, e.sensor) for e, _ in events})
    expected = expected_spans(conn, sensors)
    existing = _existing(conn, [e.event_id for e, _ in events])
    new_rows: list[dict[str, Any]] = []
    for event, explanation in events:
        rule = book.effective(event.device, event.sensor)
        blocked = rule.why_not(event, now)
        if blocked is None and any(
            s < event.end and event.start < t
            for s, t in expected.get((event.device, event.sensor), [])
        ):
            blocked = "expected (operator feedback)"
        severity = severity_of(event.peak_score)
        for target in where:
            have = existing.get((event.event_id, target), {})
            states: list[tuple[str, int]] = []
            if OPENED not in have:
                if blocked is not None:
                    result.suppressed += 1
                    continue
                states.append((OPENED, 0))
                announced = severity
            elif rule.muted(now):
                result.suppressed += 1
                continue
            else:
                announced = max(have.values(), key=RANK.__getitem__)
                if RANK[severity] > RANK[announced]:
                    states.append((f"{UPDATED}:{severity}", 1))
            if event.status == CLOSED and CLOSED_STATE not in have:
                states.append((CLOSED_STATE, 2))
            for state, seq in states:
                new_rows.append(
                    {
                        "notification_id": notification_id(event.event_id, state, target),
                        "event_id": event.event_id,
                        "state": state,
                        "seq": seq,
                        "target": target,
                        "device": event.device,
                        "sensor": event.sensor,
                        "run_id": run_id,
                        "severity": severity if state != OPENED else announced,
                        "payload": json.dumps(
                            event_data(event, state, run_id, settings.alerts.base_url, explanation)
                        ),
                        "status": PENDING,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "claimed_until": None,
                        "last_error": None,
                        "created_at": now,
                        "sent_at": None,
                    }
                )
    new_rows += _withdrawn(conn, run_id, chunk_id, now)
    if new_rows:
        statement = insert_if_absent(alert_outbox, ["notification_id"], conn.dialect.name)
        conn.execute(statement, new_rows)
    result.notifications = len(new_rows)
    return result


def _withdrawn(conn: Connection, run_id: str, chunk_id: str, now: datetime) -> list[dict]:
    """``closed`` notifications for announced events of the chunk's sensors that no longer
    exist (a re-run cleared their flags or moved their onset: the recompute deleted them), so
    no receiver holds an incident open forever. Their data is the announcement's, with
    ``status`` ``withdrawn``."""
    o, later = alert_outbox, alert_outbox.alias("later")
    chunk = _chunk_sensors(run_id, chunk_id)
    rows = conn.execute(
        select(o)
        .join(chunk, and_(o.c.device == chunk.c.device, o.c.sensor == chunk.c.sensor))
        .where(
            o.c.state == OPENED,
            ~exists().where(anomaly_events.c.event_id == o.c.event_id),
            ~exists().where(
                later.c.event_id == o.c.event_id,
                later.c.target == o.c.target,
                later.c.state == CLOSED_STATE,
            ),
        )
    ).all()
    out = []
    for row in rows:
        data = {**json.loads(row.payload), "state": CLOSED_STATE, "status": "withdrawn"}
        out.append(
            {
                **{c: getattr(row, c) for c in ("event_id", "target", "device", "sensor")},
                "notification_id": notification_id(row.event_id, CLOSED_STATE, row.target),
                "state": CLOSED_STATE,
                "seq": 2,
                "run_id": run_id,
                "severity": row.severity,
                "payload": json.dumps({**data, "run_id": run_id}),
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "claimed_until": None,
                "last_error": None,
                "created_at": now,
                "sent_at": None,
            }
        )
    return out


def _existing(conn: Connection, event_ids: list[str]) -> dict[tuple[str, str], dict[str, str]]:
    """(event, target) -> {state or base state: severity} of notifications already queued."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    o = alert_outbox
    for i in range(0, len(event_ids), 1000):
        batch = event_ids[i : i + 1000]
        rows = conn.execute(
            select(o.c.event_id, o.c.target, o.c.state, o.c.severity).where(o.c.event_id.in_(batch))
        )
        for event_id, target, state, severity in rows:
            out.setdefault((event_id, target), {})[state] = severity
    return out
