"""Sending the alert outbox: Event Grid (CloudEvents 1.0) and signed HTTPS webhooks.

:func:`deliver_pending` is called after a recording commits (``shared.runs.recording``) and by
the ``deliver_alerts`` timer for whatever is left. Each pending row whose time has come is first
*claimed* (an UPDATE that succeeds for one caller only: a lease of :data:`LEASE`), then sent:

* **Event Grid**: the claimed rows for the topic go in one publish call, a CloudEvents batch,
  through ``azure-eventgrid``'s ``EventGridPublisherClient`` with ``DefaultAzureCredential`` (the
  Function App's managed identity holds *EventGrid Data Sender* on the topic). Users route them
  with Event Grid subscriptions (Logic Apps for Teams or email, queues, their own endpoints).
* **Webhooks** (``ALERTS_WEBHOOK_URLS``, HTTPS only): one POST per notification; the body is the
  same CloudEvent in structured mode (``application/cloudevents+json``) or, with
  ``ALERTS_WEBHOOK_FORMAT=teams``, an Adaptive Card message a Teams Workflows webhook posts.
  Headers: ``X-Alert-Id`` (the notification id, stable across retries: receivers de-duplicate on
  it), ``X-Alert-Timestamp`` (Unix seconds) and ``X-Alert-Signature: sha256=<hex>``, the
  HMAC-SHA256 under ``ALERTS_WEBHOOK_SECRET`` of ``"<timestamp>." + body``
  (:func:`verify_signature` is the receiver's check).

A send that fails (network, non-2xx) is retried with exponential backoff (1 min doubling up to
1 h, :data:`MAX_ATTEMPTS` attempts), then the row is ``failed`` with its last error. Nothing here
raises into the caller: a failing receiver never fails a run; its failures are on the rows, which
the run's status and report show (:func:`run_alert_summary`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, or_, select, update

from shared.alerts.outbox import (
    EVENT_TYPES,
    EVENTGRID_TARGET,
    FAILED,
    PENDING,
    SENT,
    base_type,
    targets,
)
from shared.clock import utcnow
from shared.db.schema import alert_outbox
from shared.settings import AlertSettings, Settings

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=2)
MAX_ATTEMPTS = 10
FIRST_BACKOFF = timedelta(minutes=1)
MAX_BACKOFF = timedelta(hours=1)
TIMEOUT = (5, 10)  # connect, read seconds
SIGNATURE_TOLERANCE_SECONDS = 300
CLOUDEVENTS_JSON = "application/cloudevents+json; charset=utf-8"
# Outcome of a row whose event has an earlier state not sent yet: released, not an attempt.
WAIT = "waiting for an earlier notification of this event"


def backoff(attempts: int) -> timedelta:
    """Wait before attempt ``attempts + 1``: 1, 2, 4 ... minutes, at most an hour."""
    return min(FIRST_BACKOFF * (2 ** max(attempts - 1, 0)), MAX_BACKOFF)


# ------------------------------------------------------------------ signing


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify_signature(
    secret: str,
    body: bytes,
    timestamp: str,
    signature: str,
    now: float | None = None,
    tolerance: float = SIGNATURE_TOLERANCE_SECONDS,
) -> bool:
    """A receiver's check: the signature matches and the timestamp is recent (no replay)."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance and hmac.compare_digest(sign(secret, timestamp, body), signature)


# ------------------------------------------------------------------ messages


def source(alerts: AlertSettings) -> str:
    return f"{alerts.base_url}/api/anomalies" if alerts.base_url else "/sensor-scoring/anomalies"


def cloud_event(row, alerts: AlertSettings) -> dict[str, Any]:
    """A notification as a CloudEvents 1.0 structured-mode JSON object."""
    return {
        "specversion": "1.0",
        "id": row.notification_id,
        "source": source(alerts),
        "type": EVENT_TYPES[base_type(row.state)],
        "subject": f"{row.device}/{row.sensor}",
        "time": row.created_at.isoformat() + "Z",
        "datacontenttype": "application/json",
        "data": json.loads(row.payload),
    }


def teams_card(row) -> dict[str, Any]:
    """A notification as a Teams message with an Adaptive Card (Teams Workflows webhooks)."""
    data = json.loads(row.payload)
    what = {"opened": "opened", "updated": "escalated", "closed": "closed"}[base_type(row.state)]
    facts = [
        {"title": "Sensor", "value": f"{data['device']}/{data['sensor']}"},
        {"title": "Start", "value": data["start"]},
        {"title": "End", "value": data["end"]},
        {"title": "Peak score", "value": f"{data['peak_score']:.3f} ({data['severity']})"},
        {"title": "Run", "value": data["run_id"]},
        {"title": "Event", "value": data["event_id"]},
    ]
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "size": "Medium",
                "weight": "Bolder",
                "wrap": True,
                "text": f"Anomaly {what}: {data['device']}/{data['sensor']}",
            },
            {"type": "FactSet", "facts": facts},
        ],
    }
    if data["report_url"].startswith("https://"):
        card["actions"] = [
            {"type": "Action.OpenUrl", "title": "Run report", "url": data["report_url"]}
        ]
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}
        ],
    }


# ------------------------------------------------------------------ senders


def post_webhook(url: str, row, alerts: AlertSettings, session=None) -> None:
    """POST one notification, signed; raises on a network error or a non-2xx answer."""
    import requests

    teams = alerts.webhook_format == "teams"
    body = json.dumps(teams_card(row) if teams else cloud_event(row, alerts)).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json" if teams else CLOUDEVENTS_JSON,
        "X-Alert-Id": row.notification_id,
        "X-Alert-Timestamp": timestamp,
        "X-Alert-Signature": sign(alerts.webhook_secret or "", timestamp, body),
    }
    answer = (session or requests).post(
        url, data=body, headers=headers, timeout=TIMEOUT, allow_redirects=False
    )
    if not 200 <= answer.status_code < 300:
        raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:200]}")


def _credential(settings: Settings):
    """The app's identity (the managed identity in Azure, ``az login`` locally)."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=settings.azure_client_id)


def eventgrid_publisher(settings: Settings, credential=None) -> Callable[[list[dict]], None]:
    """A function publishing CloudEvents (dicts as :func:`cloud_event` makes) to the topic."""
    from azure.core.messaging import CloudEvent
    from azure.eventgrid import EventGridPublisherClient

    credential = credential or _credential(settings)
    client = EventGridPublisherClient(
        settings.alerts.eventgrid_endpoint, credential, connection_timeout=5, read_timeout=10
    )

    def publish(events: list[dict]) -> None:
        client.send(
            [
                CloudEvent(
                    source=e["source"],
                    type=e["type"],
                    subject=e["subject"],
                    id=e["id"],
                    time=datetime.fromisoformat(e["time"].replace("Z", "+00:00")),
                    data=e["data"],
                    datacontenttype="application/json",
                )
                for e in events
            ]
        )

    return publish


# ------------------------------------------------------------------ the outbox loop


@dataclass
class Delivery:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "retried": self.retried, "failed": self.failed}


def _claim(engine: Engine, now: datetime, limit: int) -> list:
    o = alert_outbox
    due = and_(
        o.c.status == PENDING,
        o.c.next_attempt_at <= now,
        or_(o.c.claimed_until.is_(None), o.c.claimed_until < now),
    )
    with engine.connect() as conn:
        candidates = conn.execute(
            select(o).where(due).order_by(o.c.created_at, o.c.event_id, o.c.seq).limit(limit)
        ).all()
    claimed = []
    for row in candidates:
        with engine.begin() as conn:
            got = conn.execute(
                update(o)
                .where(o.c.notification_id == row.notification_id, due)
                .values(claimed_until=now + LEASE)
            ).rowcount
        if got == 1:
            claimed.append(row)
    return claimed


def _finish(conn: Connection, row, error: str | None, now: datetime, report: Delivery) -> None:
    o = alert_outbox
    if error == WAIT:
        conn.execute(
            update(o).where(o.c.notification_id == row.notification_id).values(claimed_until=None)
        )
        return
    attempts = row.attempts + 1
    if error is None:
        values: dict[str, Any] = {"status": SENT, "sent_at": now, "last_error": None}
        report.sent += 1
    elif attempts >= MAX_ATTEMPTS:
        values = {"status": FAILED, "last_error": error[:4000]}
        report.failed += 1
        report.errors.append(error)
    else:
        values = {"next_attempt_at": now + backoff(attempts), "last_error": error[:4000]}
        report.retried += 1
        report.errors.append(error)
    conn.execute(
        update(o)
        .where(o.c.notification_id == row.notification_id)
        .values(attempts=attempts, claimed_until=None, **values)
    )
    if error is not None:
        log.warning(
            "alert delivery failed",
            extra={
                "notification_id": row.notification_id,
                "target": row.target,
                "attempts": attempts,
                "error": error[:300],
                "run_id": row.run_id,
            },
        )


def deliver_pending(
    engine: Engine,
    settings: Settings,
    limit: int = 200,
    publisher: Callable[[list[dict]], None] | None = None,
    session=None,
) -> Delivery:
    """Send the due notifications (at most ``limit``); never raises for a receiver's failure."""
    report = Delivery()
    where = targets(settings.alerts)
    now = utcnow()
    rows = _claim(engine, now, limit)
    if not rows:
        return report
    outcome: dict[str, str | None] = {}
    # (event, target) with an earlier state not sent: its later states wait (a receiver never
    # hears "closed" before "opened").
    held = _waiting_for_earlier(engine, rows)
    for row in rows:
        if (row.event_id, row.target) in held and row.seq > held[(row.event_id, row.target)]:
            outcome[row.notification_id] = WAIT

    rows_to_send = [r for r in rows if r.notification_id not in outcome]
    grid = [r for r in rows_to_send if r.target == EVENTGRID_TARGET and r.target in where]
    if grid:
        try:
            publish = publisher or eventgrid_publisher(settings)
            publish([cloud_event(r, settings.alerts) for r in grid])
            outcome.update({r.notification_id: None for r in grid})
        except Exception as exc:  # noqa: BLE001 - a failing topic never fails the caller
            error = f"Event Grid: {type(exc).__name__}: {str(exc)[:300]}"
            outcome.update({r.notification_id: error for r in grid})
    # One HTTP session for the batch: its connections (and TLS handshakes) are reused.
    own_session = session is None and any(r.target != EVENTGRID_TARGET for r in rows_to_send)
    if own_session:
        import requests

        session = requests.Session()
    for row in rows_to_send:
        if row.target == EVENTGRID_TARGET and row.target in where:
            continue
        if row.target not in where:
            outcome[row.notification_id] = f"target {row.target} is no longer configured"
            continue
        key = (row.event_id, row.target)
        if key in held and row.seq > held[key]:
            outcome[row.notification_id] = WAIT
            continue
        try:
            post_webhook(where[row.target], row, settings.alerts, session)
            outcome[row.notification_id] = None
        except Exception as exc:  # noqa: BLE001 - a failing receiver never fails the caller
            outcome[row.notification_id] = f"webhook: {type(exc).__name__}: {str(exc)[:300]}"
            held.setdefault((row.event_id, row.target), row.seq)
    if own_session:
        session.close()
    with engine.begin() as conn:
        for row in rows:
            _finish(conn, row, outcome.get(row.notification_id), now, report)
    return report


def _waiting_for_earlier(engine: Engine, rows: list) -> dict[tuple[str, str], int]:
    """(event, target) -> the lowest seq of its notifications still pending outside ``rows``."""
    o = alert_outbox
    mine = {r.notification_id for r in rows}
    later = sorted({r.event_id for r in rows if r.seq > 0})
    out: dict[tuple[str, str], int] = {}
    with engine.connect() as conn:
        for i in range(0, len(later), 1000):
            found = conn.execute(
                select(o.c.notification_id, o.c.event_id, o.c.target, o.c.seq).where(
                    o.c.event_id.in_(later[i : i + 1000]), o.c.status == PENDING
                )
            )
            for notification, event_id, target, seq in found:
                if notification not in mine:
                    key = (event_id, target)
                    out[key] = min(seq, out.get(key, seq))
    return out


def deliver_quietly(engine: Engine, settings: Settings) -> Delivery | None:
    """:func:`deliver_pending` for callers that must not fail (recording): logs, never raises."""
    if not settings.alerts.enabled:
        return None
    try:
        return deliver_pending(engine, settings)
    except Exception:  # noqa: BLE001 - e.g. SQL down: the timer sends them later
        log.exception("alert delivery failed; the deliver_alerts timer retries")
        return None


# ------------------------------------------------------------------ reading


def run_alert_summary(bind: Engine | Connection, run_id: str, errors: int = 10) -> dict[str, Any]:
    """Counts of the notifications a run raised, by status, and their latest errors."""
    o = alert_outbox

    def read(conn: Connection) -> dict[str, Any]:
        counts = dict(
            conn.execute(
                select(o.c.status, func.count()).where(o.c.run_id == run_id).group_by(o.c.status)
            ).all()
        )
        failing = conn.execute(
            select(o.c.notification_id, o.c.event_id, o.c.state, o.c.target, o.c.status)
            .add_columns(o.c.attempts, o.c.last_error)
            .where(o.c.run_id == run_id, o.c.last_error.is_not(None))
            .order_by(o.c.created_at.desc(), o.c.notification_id)
            .limit(errors)
        ).all()
        return {
            **{s: int(counts.get(s, 0)) for s in (SENT, PENDING, FAILED)},
            "errors": [dict(r._mapping) for r in failing],
        }

    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return read(conn)
    return read(bind)


def list_notifications(
    bind: Engine,
    run_id: str | None = None,
    event_id: str | None = None,
    status: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    o = alert_outbox
    query = select(o).order_by(o.c.created_at.desc(), o.c.event_id, o.c.seq).limit(limit)
    for column, value in ((o.c.run_id, run_id), (o.c.event_id, event_id), (o.c.status, status)):
        if value is not None:
            query = query.where(column == value)
    with bind.connect() as conn:
        rows = conn.execute(query).all()
    out = []
    for row in rows:
        item = dict(row._mapping)
        item["type"] = EVENT_TYPES[base_type(row.state)]
        item["data"] = json.loads(item.pop("payload"))
        for key, value in item.items():
            if isinstance(value, datetime):
                item[key] = value.isoformat() + "Z"
        out.append(item)
    return out
