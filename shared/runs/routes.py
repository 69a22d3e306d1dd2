"""The run routes and their OpenAPI documentation (see :mod:`shared.routes`).

Handlers: :mod:`shared.runs.http` (start, list, get) and :mod:`shared.report_http` (the report).
"""

from __future__ import annotations

from shared.routes import Reply, Route, limit, query, ref

_HANDLERS = "shared.runs.http"
# shared.runs.records.STATUSES, written out: importing records here would load SQLAlchemy at
# cold start (tests/test_routes.py checks the two agree).
STATUSES = ("pending", "submitted", "scoring", "completed", "partial", "failed")

SCHEMAS = {
    "StartRun": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "window_end": {
                "type": "string",
                "format": "date-time",
                "description": "End (exclusive) of the window; default: "
                "the latest schedule occurrence",
            },
            "window_minutes": {
                "type": "number",
                "exclusiveMinimum": True,
                "minimum": 0,
                "description": "Window length; default: the schedule's interval",
            },
            "devices": {"type": "array", "items": {"type": "string"}},
            "sensors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["device", "sensor"],
                    "properties": {
                        "device": {"type": "string"},
                        "sensor": {"type": "string"},
                    },
                },
            },
            "rerun": {
                "type": "boolean",
                "description": "Start a new attempt even if "
                "a run for this window and filters exists",
            },
        },
    },
    "Started": {
        "type": "object",
        "properties": {
            "run_id": {"type": "string"},
            "status": {"type": "string"},
            "created": {"type": "boolean"},
            "status_url": {"type": "string"},
            "window": {"type": "object"},
        },
    },
    "Run": {
        "type": "object",
        "properties": {
            "run_id": {"type": "string"},
            "status": {"type": "string", "enum": list(STATUSES)},
            "window": {
                "type": "object",
                "properties": {
                    "start": {"type": "string", "format": "date-time"},
                    "end": {"type": "string", "format": "date-time"},
                },
            },
            "trigger": {"type": "string"},
            "executor": {"type": "string"},
            "job_id": {"type": "string", "nullable": True},
            "job_url": {"type": "string", "nullable": True},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "timings": {"type": "object", "additionalProperties": {"type": "number"}},
            "error": {"type": "string", "nullable": True},
            "errors": {"type": "array", "items": {"type": "object"}},
        },
    },
}

_RUN = ref("Run")
_LOCATION = {"Location": {"description": "The run's status URL", "schema": {"type": "string"}}}
_NO_RUN = Reply("404", "No such run")

ROUTES = [
    Route(
        name="start_run",
        operation_id="startRun",
        method="POST",
        path="runs",
        handler=f"{_HANDLERS}:start_run_handler",
        summary="Start an on-demand run",
        description="Records the run (status `pending`) and queues its preparation "
        "(aggregate, write chunks, submit), which a queue-triggered function does; the "
        "response does not wait for it. Idempotent: the same window and filters return "
        "the same run (200) unless `rerun` is true. Poll `status_url` (also in the "
        "`Location` header).",
        body=ref("StartRun"),
        body_required=False,
        status="202",
        response=ref("Started"),
        response_description="Run recorded and queued; poll status_url",
        headers=_LOCATION,
        replies=(
            Reply(
                "200",
                "A run for this window and filters exists already",
                ref("Started"),
                headers=_LOCATION,
            ),
            Reply(
                "503",
                "The run could not be queued (it is recorded as failed with the reason); "
                "retry with `rerun` later",
            ),
        ),
    ),
    Route(
        name="list_runs",
        operation_id="listRuns",
        method="GET",
        path="runs",
        handler=f"{_HANDLERS}:list_runs_handler",
        summary="List runs, newest first",
        parameters=(query("status", {"type": "string", "enum": list(STATUSES)}), limit(20)),
        response={"type": "object", "properties": {"runs": {"type": "array", "items": _RUN}}},
        response_description="Runs",
    ),
    Route(
        name="get_run",
        operation_id="getRun",
        method="GET",
        path="runs/{run_id}",
        handler=f"{_HANDLERS}:get_run_handler",
        summary="A run's status, counts, timings and errors",
        description="Reconciles the run with its executor's job (a failed Azure ML "
        "job fails the run) at most once per RECONCILE_INTERVAL_SECONDS per run, so "
        "polling does not call Azure ML on every request.",
        response=_RUN,
        response_description="The run",
        errors=(),
        replies=(_NO_RUN,),
    ),
    Route(
        name="run_report",
        operation_id="runReport",
        method="GET",
        path="runs/{run_id}/report",
        handler="shared.report_http:report_handler",
        summary="The run's report: an HTML page with plots of anomalous sensors",
        media_type="text/html",
        response={"type": "string"},
        response_description="HTML report",
        errors=(),
        replies=(_NO_RUN,),
    ),
]
