"""The alert routes and their OpenAPI documentation (see :mod:`shared.routes`)."""

from __future__ import annotations

from shared.routes import Route, limit, query

_RULE = {"$ref": "#/components/schemas/AlertRule"}
_ID = {"type": "string", "nullable": True}
_HANDLERS = "shared.alerts.http"

SCHEMAS = {
    "AlertRule": {
        "type": "object",
        "properties": {
            "rule_id": {"type": "string", "description": "fleet, or derived from the scope"},
            "scope": {"type": "string", "enum": ["fleet", "device", "sensor"]},
            "device": _ID,
            "sensor": _ID,
            "min_score": {"type": "number", "nullable": True},
            "min_duration_minutes": {"type": "number", "nullable": True},
            "quiet_start": {"type": "string", "nullable": True, "example": "22:00"},
            "quiet_end": {"type": "string", "nullable": True, "example": "06:00"},
            "muted_until": {"type": "string", "format": "date-time", "nullable": True},
            "mute_reason": {"type": "string", "nullable": True},
            "comment": {"type": "string", "nullable": True},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "AlertRuleInput": {
        "type": "object",
        "additionalProperties": False,
        "description": "The scope (no device: the fleet; a device; a device and sensor) and the "
        "fields to set; fields left out keep their value, null clears one.",
        "properties": {
            "device": {"type": "string"},
            "sensor": {"type": "string"},
            "min_score": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
            "min_duration_minutes": {
                "type": "number",
                "minimum": 0,
                "maximum": 10080,
                "nullable": True,
            },
            "quiet_start": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
            "quiet_end": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
            "comment": {"type": "string", "maxLength": 500, "nullable": True},
        },
    },
    "Mute": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "device": {"type": "string"},
            "sensor": {"type": "string"},
            "minutes": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
            "until": {"type": "string", "format": "date-time"},
            "reason": {"type": "string", "maxLength": 500},
        },
    },
    "Notification": {
        "type": "object",
        "properties": {
            "notification_id": {"type": "string", "description": "CloudEvent id, X-Alert-Id"},
            "event_id": {"type": "string"},
            "state": {"type": "string", "description": "opened, updated:<severity>, closed"},
            "type": {"type": "string", "example": "sensors.anomaly.opened"},
            "target": {"type": "string"},
            "device": {"type": "string"},
            "sensor": {"type": "string"},
            "run_id": {"type": "string", "nullable": True},
            "severity": {"type": "string", "enum": ["minor", "major", "critical"]},
            "status": {"type": "string", "enum": ["pending", "sent", "failed"]},
            "attempts": {"type": "integer"},
            "last_error": {"type": "string", "nullable": True},
            "created_at": {"type": "string", "format": "date-time"},
            "sent_at": {"type": "string", "format": "date-time", "nullable": True},
            "data": {"type": "object", "description": "the CloudEvent's data"},
        },
    },
}

_RULES = {"type": "object", "properties": {"rules": {"type": "array", "items": _RULE}}}

ROUTES = [
    Route(
        name="list_alert_rules",
        method="GET",
        path="alerts/rules",
        handler=f"{_HANDLERS}:list_rules_handler",
        summary="Alert rules (fleet, device and sensor scopes)",
        description="With no rule every anomaly event alerts (peak score at or above "
        "SENSITIVITY). A sensor's effective rule is the fleet's, overlaid by its device's, "
        "then its own.",
        response=_RULES,
        errors=(),
    ),
    Route(
        name="set_alert_rule",
        method="POST",
        path="alerts/rules",
        handler=f"{_HANDLERS}:set_rule_handler",
        summary="Create or update the rule of a scope",
        body={"$ref": "#/components/schemas/AlertRuleInput"},
        response=_RULE,
    ),
    Route(
        name="delete_alert_rule",
        method="DELETE",
        path="alerts/rules/{rule_id}",
        handler=f"{_HANDLERS}:delete_rule_handler",
        summary="Delete a rule",
        response={"type": "object", "properties": {"deleted": {"type": "string"}}},
        errors=("404",),
    ),
    Route(
        name="mute_alerts",
        method="POST",
        path="alerts/mute",
        handler=f"{_HANDLERS}:mute_handler",
        summary="Mute a scope's alerts for some minutes or until a time (expires by itself)",
        body={"$ref": "#/components/schemas/Mute"},
        response=_RULE,
    ),
    Route(
        name="unmute_alerts",
        method="POST",
        path="alerts/unmute",
        handler=f"{_HANDLERS}:unmute_handler",
        summary="End a scope's mute now",
        body={
            "type": "object",
            "additionalProperties": False,
            "properties": {"device": {"type": "string"}, "sensor": {"type": "string"}},
        },
        response=_RULE,
        errors=("400", "404"),
    ),
    Route(
        name="list_alerts",
        method="GET",
        path="alerts",
        handler=f"{_HANDLERS}:list_alerts_handler",
        summary="Notifications sent, pending or failed (the delivery log), newest first",
        parameters=(
            query("run_id", {"type": "string"}, "Raised by this run's recording"),
            query("event_id", {"type": "string"}),
            query("status", {"type": "string", "enum": ["pending", "sent", "failed"]}),
            limit(100),
        ),
        response={
            "type": "object",
            "properties": {
                "alerts": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/Notification"},
                }
            },
        },
    ),
]
