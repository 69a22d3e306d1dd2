"""HTTP handlers of operator feedback (declared in :mod:`.routes`)."""

from __future__ import annotations

import azure.functions as func

from shared.api import (
    BadRequest,
    checked_id,
    error,
    json_body,
    json_response,
    no_unknown_params,
    parse_time,
)
from shared.context import AppContext
from shared.feedback import service

FEEDBACK_BODY = {"verdict", "comment", "author", "span_start", "span_end"}
SUMMARY_PARAMS = {"device", "sensor", "since", "until", "period"}


def give_feedback_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    from shared.events import get_event

    event_id = req.route_params.get("event_id", "")
    body = json_body(req, FEEDBACK_BODY)
    verdict = body.get("verdict")
    if verdict not in service.VERDICTS:
        raise BadRequest(f"verdict must be one of {', '.join(service.VERDICTS)}")
    span = None
    if "span_start" in body or "span_end" in body:
        if "span_start" not in body or "span_end" not in body:
            raise BadRequest("span_start and span_end go together")
        span = (
            parse_time("span_start", body["span_start"]),
            parse_time("span_end", body["span_end"]),
        )
    event = get_event(ctx.engine, event_id)
    if event is None:
        return error(404, f"no anomaly event {event_id[:80]!r}")
    try:
        with ctx.engine.begin() as conn:
            given = service.give_feedback(
                conn,
                event,
                verdict,
                comment=body.get("comment"),
                author=body.get("author"),
                span=span,
                default_sensitivity=ctx.settings.sensitivity,
            )
            overrides = service.sensitivity_overrides(conn)
    except service.FeedbackError as exc:
        raise BadRequest(str(exc)) from None
    return json_response(
        {**given.as_dict(), "sensitivity": overrides.get((event.device, event.sensor))}, 201
    )


def list_feedback_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    from shared.events import get_event

    event_id = req.route_params.get("event_id", "")
    if get_event(ctx.engine, event_id) is None:
        return error(404, f"no anomaly event {event_id[:80]!r}")
    with ctx.engine.connect() as conn:
        given = service.feedback_for(conn, [event_id]).get(event_id, [])
    return json_response({"feedback": [f.as_dict() for f in given]})


def summary_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    no_unknown_params(req, SUMMARY_PARAMS)
    p = req.params
    since = parse_time("since", p["since"]) if "since" in p else None
    until = parse_time("until", p["until"]) if "until" in p else None
    try:
        with ctx.engine.connect() as conn:
            body = service.summary(
                conn,
                device=checked_id("device", p["device"]) if "device" in p else None,
                sensor=checked_id("sensor", p["sensor"]) if "sensor" in p else None,
                since=since,
                until=until,
                period=p.get("period", "week"),
            )
    except service.FeedbackError as exc:
        raise BadRequest(str(exc)) from None
    return json_response(body)


def sensitivities_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    no_unknown_params(req, set())
    with ctx.engine.connect() as conn:
        return json_response({"sensitivities": service.list_sensitivities(conn)})
