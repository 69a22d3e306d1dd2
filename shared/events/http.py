"""HTTP handlers of anomaly events (declared in :mod:`.routes`).

Each event carries its URL, the reports of the runs that raised and last extended it, and the
operators' latest verdict (``shared.feedback``). ``shared.api.handle`` turns ``BadRequest`` into
a 400.
"""

from __future__ import annotations

from typing import Any

import azure.functions as func

from shared.api import (
    BadRequest,
    api_url,
    checked_id,
    error,
    json_response,
    limit_param,
    parse_time,
)
from shared.context import AppContext
from shared.events import (
    STATUSES,
    AnomalyEvent,
    EventFilters,
    event_buckets,
    get_event,
    list_events,
)
from shared.feedback import feedback_for

ANOMALY_PARAMS = {"device", "sensor", "since", "until", "status", "run_id", "min_score", "limit"}


def _event_body(req: func.HttpRequest, event: AnomalyEvent) -> dict[str, Any]:
    return {
        **event.as_dict(),
        "url": api_url(req, f"anomalies/{event.event_id}"),
        # The report of the run that raised the alert (the onset), and of the latest one.
        "report_url": api_url(req, f"runs/{event.first_run_id}/report"),
        "last_report_url": api_url(req, f"runs/{event.last_run_id}/report"),
    }


def anomalies_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    """Anomaly events (one per incident), newest onset first; filters: ``ANOMALY_PARAMS``."""
    unknown = sorted(set(req.params) - ANOMALY_PARAMS)
    if unknown:
        raise BadRequest(
            f"unknown parameter(s): {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(ANOMALY_PARAMS))}"
        )
    params = req.params
    since = parse_time("since", params["since"]) if "since" in params else None
    until = parse_time("until", params["until"]) if "until" in params else None
    if since and until and since >= until:
        raise BadRequest("since must be before until")
    status = params.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
    min_score = None
    if "min_score" in params:
        try:
            min_score = float(params["min_score"])
        except ValueError:
            raise BadRequest(f"min_score={params['min_score']!r} is not a number") from None
        if not 0.0 <= min_score <= 1.0:
            raise BadRequest("min_score must be between 0 and 1")
    filters = EventFilters(
        device=checked_id("device", params["device"]) if "device" in params else None,
        sensor=checked_id("sensor", params["sensor"]) if "sensor" in params else None,
        since=since,
        until=until,
        status=status,
        run_id=params.get("run_id"),
        min_score=min_score,
    )
    events = list_events(ctx.engine, filters, limit=limit_param(req))
    with ctx.engine.connect() as conn:  # each event's latest verdict
        given = feedback_for(conn, [e.event_id for e in events])
    return json_response(
        {
            "events": [
                {**_event_body(req, e), "verdict": _verdict(given.get(e.event_id))} for e in events
            ]
        }
    )


def _verdict(feedback) -> str | None:
    return feedback[-1].verdict if feedback else None


def anomaly_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    """One event with every scored bucket of its span (flagged or not)."""
    event_id = req.route_params.get("event_id", "")
    event = get_event(ctx.engine, event_id)
    if event is None:
        return error(404, f"no anomaly event {event_id!r}")
    buckets, truncated = event_buckets(ctx.engine, event)
    with ctx.engine.connect() as conn:  # operators' verdicts on it, oldest first
        given = [f.as_dict() for f in feedback_for(conn, [event_id]).get(event_id, [])]
    return json_response(
        {
            **_event_body(req, event),
            "verdict": given[-1]["verdict"] if given else None,
            "feedback": given,
            "buckets": buckets,
            "buckets_truncated": truncated,
        }
    )
