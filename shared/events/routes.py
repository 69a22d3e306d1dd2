"""The anomaly-event routes and their OpenAPI documentation (see :mod:`shared.routes`).

Handlers: :mod:`shared.events.http`. The event schemas below are the one place that documents
what ``AnomalyEvent.as_dict()`` and the handlers return.
"""

from __future__ import annotations

from shared.routes import Reply, Route, limit, query, ref

_HANDLERS = "shared.events.http"
# shared.events.STATUSES, written out: importing it here would load numpy and pandas at cold
# start (tests/test_routes.py checks the two agree).
STATUSES = ("open", "closed")

SCHEMAS = {
    "AnomalyEvent": {
        "type": "object",
        "properties": {
            "event_id": {
                "type": "string",
                "description": "Stable id (hash of device, sensor and onset)",
            },
            "device": {"type": "string"},
            "sensor": {"type": "string"},
            "start": {
                "type": "string",
                "format": "date-time",
                "description": "Onset: start of the first flagged bucket (the alert)",
            },
            "end": {
                "type": "string",
                "format": "date-time",
                "description": "End of the last flagged bucket",
            },
            "last_bucket_start": {"type": "string", "format": "date-time"},
            "n_buckets": {"type": "integer", "description": "Flagged buckets"},
            "onset_score": {"type": "number"},
            "peak_score": {"type": "number"},
            "peak_bucket": {"type": "string", "format": "date-time"},
            "status": {
                "type": "string",
                "enum": list(STATUSES),
                "description": "open while a flag in the sensor's next bucket would "
                "still join the event",
            },
            "first_run_id": {"type": "string"},
            "last_run_id": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "url": {"type": "string"},
            "report_url": {
                "type": "string",
                "description": "Report of the run that raised the alert",
            },
            "last_report_url": {"type": "string"},
            "verdict": {
                "type": "string",
                "nullable": True,
                "enum": ["confirmed", "false_alarm", "expected"],
                "description": "The latest operator feedback (shared.feedback), if any",
            },
            "explanation": {
                "allOf": [ref("Explanation")],
                "nullable": True,
                "description": "Why: the explanation of the peak bucket (null when it was "
                "scored before explanations existed)",
            },
        },
    },
    "Explanation": {
        "type": "object",
        "description": "Why a bucket was flagged (scoring.explain). kind `baseline`: the default "
        "detector's own comparison that decided the flag; kind `feature_deviation`: for other "
        "estimators, which features deviated most from the model's training distribution "
        "(robust z-scores), not the model's own reasoning.",
        "required": ["kind", "score", "model_version", "summary"],
        "properties": {
            "kind": {"type": "string", "enum": ["baseline", "feature_deviation"]},
            "summary": {"type": "string", "description": "One sentence for people"},
            "comparison": {
                "type": "string",
                "description": "baseline: level_vs_recent, level_vs_time_of_day, "
                "min_vs_recent, max_vs_recent, spread_vs_recent, novel_min, novel_max or "
                "novel_spread; feature_deviation: <feature>_vs_training",
            },
            "feature": {
                "type": "string",
                "description": "The aggregate concerned (mean, min, max, std, ...)",
            },
            "direction": {"type": "string", "enum": ["above", "below"]},
            "observed": {"type": "number", "nullable": True},
            "expected": {
                "type": "number",
                "nullable": True,
                "description": "Centre of the expected range (a median)",
            },
            "expected_low": {"type": "number", "nullable": True},
            "expected_high": {"type": "number", "nullable": True},
            "deviation": {
                "type": "number",
                "nullable": True,
                "description": "In robust standard deviations (IQR / 1.349)",
            },
            "rule": {
                "type": "string",
                "enum": ["single_bucket", "sustained", "novelty"],
                "description": "baseline: how the flag came about",
            },
            "deviations": {
                "type": "object",
                "additionalProperties": {"type": "number", "nullable": True},
                "description": "baseline: every comparison's deviation",
            },
            "novel": {"type": "array", "items": {"type": "string"}},
            "score": {"type": "number"},
            "sensitivity": {"type": "number"},
            "model_version": {"type": "integer"},
            "model_format": {"type": "string"},
            "estimator": {"type": "string"},
            "available": {
                "type": "boolean",
                "description": "feature_deviation: false when the model was trained before "
                "training statistics were stored",
            },
            "description": {"type": "string"},
            "features": {
                "type": "array",
                "description": "feature_deviation: the most deviating features",
                "items": {
                    "type": "object",
                    "properties": {
                        "feature": {"type": "string"},
                        "observed": {"type": "number", "nullable": True},
                        "median": {"type": "number", "nullable": True},
                        "expected_low": {"type": "number", "nullable": True},
                        "expected_high": {"type": "number", "nullable": True},
                        "z": {"type": "number", "nullable": True},
                        "direction": {"type": "string", "enum": ["above", "below"]},
                    },
                },
            },
        },
    },
    "AnomalyEventDetail": {
        "allOf": [
            ref("AnomalyEvent"),
            {
                "type": "object",
                "properties": {
                    "buckets": {"type": "array", "items": ref("Prediction")},
                    "buckets_truncated": {"type": "boolean"},
                    "feedback": {
                        "type": "array",
                        "description": "Every verdict, oldest first (schema "
                        "Feedback, from the feedback routes)",
                        "items": {"type": "object"},
                    },
                },
            },
        ]
    },
    "Prediction": {
        "type": "object",
        "properties": {
            "run_id": {"type": "string"},
            "device": {"type": "string"},
            "sensor": {"type": "string"},
            "bucket_start": {"type": "string", "format": "date-time"},
            "count": {"type": "integer"},
            "mean": {"type": "number"},
            "min": {"type": "number"},
            "max": {"type": "number"},
            "std": {"type": "number"},
            "score": {"type": "number"},
            "is_anomaly": {"type": "boolean"},
            "model_version": {"type": "integer"},
            "expected_low": {
                "type": "number",
                "nullable": True,
                "description": "Band the mean was expected in (sensors with a flag)",
            },
            "expected_high": {"type": "number", "nullable": True},
            "explanation": {
                "allOf": [ref("Explanation")],
                "nullable": True,
                "description": "Why the bucket was flagged (flagged buckets)",
            },
        },
    },
}

ROUTES = [
    Route(
        name="list_anomalies",
        operation_id="listAnomalies",
        method="GET",
        path="anomalies",
        handler=f"{_HANDLERS}:anomalies_handler",
        summary="Anomaly events (one per incident), newest onset first",
        description="Flagged buckets of a sensor fewer than EVENT_GAP_BUCKETS "
        "unflagged buckets apart form one event; its onset (`start`) is the alert. "
        "`since`/`until` select events that overlap the period. `run_id` selects the "
        "events of the sensors the run scored that overlap its window. The buckets of "
        "an event are at `url` (`GET /anomalies/{event_id}`).",
        # shared.events.http.ANOMALY_PARAMS: the handler refuses any other parameter.
        parameters=(
            query("device", {"type": "string"}),
            query("sensor", {"type": "string"}),
            query("run_id", {"type": "string"}),
            query(
                "since",
                {"type": "string", "format": "date-time"},
                "Only events that end after this time",
            ),
            query(
                "until",
                {"type": "string", "format": "date-time"},
                "Only events that start before this time",
            ),
            query("status", {"type": "string", "enum": list(STATUSES)}),
            query(
                "min_score",
                {"type": "number", "minimum": 0, "maximum": 1},
                "Only events whose peak score is at least this",
            ),
            limit(100),
        ),
        response={
            "type": "object",
            "properties": {"events": {"type": "array", "items": ref("AnomalyEvent")}},
        },
        response_description="Events",
    ),
    Route(
        name="get_anomaly",
        operation_id="getAnomaly",
        method="GET",
        path="anomalies/{event_id}",
        handler=f"{_HANDLERS}:anomaly_handler",
        summary="One anomaly event with every scored bucket of its span",
        description="Buckets from `start` to `end`, flagged or not, as the newest "
        "run scored them (at most 5000; `buckets_truncated` says when cut).",
        response=ref("AnomalyEventDetail"),
        response_description="The event and its buckets",
        errors=(),
        replies=(Reply("404", "No such event"),),
    ),
]
