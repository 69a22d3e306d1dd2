"""HTTP handlers of the alert rules, mutes and the delivery log (declared in :mod:`.routes`).

Handlers take the request (without the function key) and return a response; ``shared.api.handle``
turns ``BadRequest`` into a 400 with its message.
"""

from __future__ import annotations

from typing import Any

import azure.functions as func

from shared.alerts import rules
from shared.alerts.delivery import list_notifications
from shared.alerts.outbox import STATUSES
from shared.api import (
    BadRequest,
    checked_id,
    error,
    json_body,
    json_response,
    limit_param,
    no_unknown_params,
    parse_time,
)
from shared.clock import utcnow
from shared.context import AppContext

RULE_BODY = {"device", "sensor", *rules.RULE_FIELDS} - {"muted_until", "mute_reason"}
MUTE_BODY = {"device", "sensor", "minutes", "until", "reason"}
ALERT_PARAMS = {"run_id", "event_id", "status", "limit"}


def scope_of(body: dict[str, Any]) -> tuple[str | None, str | None]:
    device = checked_id("device", body["device"]) if body.get("device") is not None else None
    sensor = checked_id("sensor", body["sensor"]) if body.get("sensor") is not None else None
    if sensor is not None and device is None:
        raise BadRequest("a sensor scope needs its device")
    return device, sensor


def list_rules_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    no_unknown_params(req, set())
    with ctx.engine.connect() as conn:
        found = rules.list_rules(conn)
    return json_response({"rules": [r.as_dict() for r in found]})


def set_rule_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    body = json_body(req, RULE_BODY)
    device, sensor = scope_of(body)
    fields = {k: v for k, v in body.items() if k not in ("device", "sensor")}
    try:
        with ctx.engine.begin() as conn:
            rule = rules.set_rule(conn, device, sensor, **fields)
    except rules.RuleError as exc:
        raise BadRequest(str(exc)) from None
    return json_response(rule.as_dict())


def delete_rule_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    rule_id = req.route_params.get("rule_id", "")
    with ctx.engine.begin() as conn:
        deleted = rules.delete_rule(conn, rule_id)
    if not deleted:
        return error(404, f"no alert rule {rule_id[:80]!r}")
    return json_response({"deleted": rule_id})


def mute_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    body = json_body(req, MUTE_BODY)
    device, sensor = scope_of(body)
    until = parse_time("until", body["until"]) if body.get("until") is not None else None
    reason = body.get("reason")
    try:
        end = rules.mute_until(body.get("minutes"), until, utcnow())
        with ctx.engine.begin() as conn:
            rule = rules.mute(conn, device, sensor, end, reason)
    except rules.RuleError as exc:
        raise BadRequest(str(exc)) from None
    return json_response(rule.as_dict())


def unmute_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    body = json_body(req, {"device", "sensor"})
    device, sensor = scope_of(body)
    with ctx.engine.begin() as conn:
        rule = rules.unmute(conn, device, sensor)
    if rule is None:
        return error(404, "no alert rule for this scope (nothing is muted)")
    return json_response(rule.as_dict())


def list_alerts_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    no_unknown_params(req, ALERT_PARAMS)
    status = req.params.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
    found = list_notifications(
        ctx.engine,
        run_id=req.params.get("run_id"),
        event_id=req.params.get("event_id"),
        status=status,
        limit=limit_param(req),
    )
    return json_response({"alerts": found})
