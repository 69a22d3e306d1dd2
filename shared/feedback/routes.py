"""The feedback routes and their OpenAPI documentation (see :mod:`shared.routes`)."""

from __future__ import annotations

from shared.routes import Route, query

_HANDLERS = "shared.feedback.http"
_VERDICT = {"type": "string", "enum": ["confirmed", "false_alarm", "expected"]}
_SHARES = {
    "type": "object",
    "properties": {
        "confirmed": {"type": "integer"},
        "false_alarm": {"type": "integer"},
        "expected": {"type": "integer"},
        "confirmed_share": {
            "type": "number",
            "nullable": True,
            "description": "confirmed / (confirmed + false_alarm): the operator's precision",
        },
        "false_alarm_share": {"type": "number", "nullable": True},
    },
}

SCHEMAS = {
    "FeedbackInput": {
        "type": "object",
        "additionalProperties": False,
        "required": ["verdict"],
        "properties": {
            "verdict": _VERDICT,
            "comment": {"type": "string", "maxLength": 4000},
            "author": {"type": "string", "maxLength": 200},
            "span_start": {
                "type": "string",
                "format": "date-time",
                "description": "expected only: alerts of this sensor are suppressed over "
                "[span_start, span_end) (default: the event's span)",
            },
            "span_end": {"type": "string", "format": "date-time"},
        },
    },
    "Feedback": {
        "type": "object",
        "properties": {
            "feedback_id": {"type": "integer"},
            "event_id": {"type": "string"},
            "device": {"type": "string"},
            "sensor": {"type": "string"},
            "event_start": {"type": "string", "format": "date-time"},
            "event_end": {"type": "string", "format": "date-time"},
            "peak_score": {"type": "number"},
            "verdict": _VERDICT,
            "comment": {"type": "string", "nullable": True},
            "author": {"type": "string", "nullable": True},
            "span_start": {"type": "string", "format": "date-time"},
            "span_end": {"type": "string", "format": "date-time"},
            "created_at": {"type": "string", "format": "date-time"},
            "sensitivity": {
                "type": "number",
                "nullable": True,
                "description": "false_alarm: the sensor's sensitivity from now on",
            },
        },
    },
    "FeedbackShares": _SHARES,
    "FeedbackSummary": {
        "type": "object",
        "properties": {
            "fleet": {"$ref": "#/components/schemas/FeedbackShares"},
            "sensors": {
                "type": "array",
                "items": {
                    "allOf": [
                        {"$ref": "#/components/schemas/FeedbackShares"},
                        {
                            "type": "object",
                            "properties": {
                                "device": {"type": "string"},
                                "sensor": {"type": "string"},
                            },
                        },
                    ]
                },
            },
            "period": {"type": "string", "enum": ["day", "week"]},
            "over_time": {
                "type": "array",
                "items": {
                    "allOf": [
                        {"$ref": "#/components/schemas/FeedbackShares"},
                        {
                            "type": "object",
                            "properties": {
                                "period_start": {"type": "string", "format": "date-time"}
                            },
                        },
                    ]
                },
            },
        },
    },
}

_FEEDBACK = {"$ref": "#/components/schemas/Feedback"}

ROUTES = [
    Route(
        name="give_feedback",
        method="POST",
        path="anomalies/{event_id}/feedback",
        handler=f"{_HANDLERS}:give_feedback_handler",
        summary="Give a verdict on an anomaly event",
        description="`confirmed`; `false_alarm` (the next training keeps the span as normal "
        "and the sensor's sensitivity is raised above the event's peak score, at most 0.95); "
        "`expected` (no alerts for the sensor over the span). The latest verdict counts.",
        body={"$ref": "#/components/schemas/FeedbackInput"},
        response=_FEEDBACK,
        status="201",
        errors=("400", "404"),
    ),
    Route(
        name="list_feedback",
        method="GET",
        path="anomalies/{event_id}/feedback",
        handler=f"{_HANDLERS}:list_feedback_handler",
        summary="Every verdict given on an event, oldest first",
        response={
            "type": "object",
            "properties": {"feedback": {"type": "array", "items": _FEEDBACK}},
        },
        errors=("400", "404"),
    ),
    Route(
        name="feedback_summary",
        method="GET",
        path="feedback/summary",
        handler=f"{_HANDLERS}:summary_handler",
        summary="Verdicts per sensor and fleet, and their shares over time",
        description="Events' latest verdicts, by event onset. The confirmed share is the "
        "operator's own precision figure.",
        parameters=(
            query("device", {"type": "string"}),
            query("sensor", {"type": "string"}),
            query("since", {"type": "string", "format": "date-time"}, "Onsets from this time"),
            query("until", {"type": "string", "format": "date-time"}, "Onsets before this"),
            query("period", {"type": "string", "enum": ["day", "week"], "default": "week"}),
        ),
        response={"$ref": "#/components/schemas/FeedbackSummary"},
    ),
    Route(
        name="list_sensitivities",
        method="GET",
        path="feedback/sensitivities",
        handler=f"{_HANDLERS}:sensitivities_handler",
        summary="Per-sensor sensitivities raised by false-alarm feedback, with reasons",
        response={
            "type": "object",
            "properties": {"sensitivities": {"type": "array", "items": {"type": "object"}}},
        },
        errors=(),
    ),
]
