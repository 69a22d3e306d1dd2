"""The HTTP API for operators: start runs, watch them, query anomalies.

Handlers take a real ``azure.functions.HttpRequest`` and return an ``HttpResponse``; the
function adapters in ``function_app.py`` only pass them through. Every input is validated:
a bad request gets a 4xx with a JSON ``{"error": "..."}`` that says what to fix. The OpenAPI
description of these endpoints is :data:`OPENAPI` (served at ``/api/openapi.json``).
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import azure.functions as func

from shared.clock import parse_utc, utcnow
from shared.context import AppContext
from shared.ingestion.validation import EARLIEST, InvalidReading, check_id
from shared.runs import records
from shared.runs.reconcile import reconcile_run_if_due
from shared.runs.records import RunFilters
from shared.runs.service import RunQueueError, RunRequestError, request_run
from shared.runs.windows import Window, latest_window, window_ending

log = logging.getLogger(__name__)

MAX_LIST = 500
START_FIELDS = {"window_end", "window_minutes", "devices", "sensors", "rerun"}
FUTURE_TOLERANCE = timedelta(minutes=1)


class BadRequest(ValueError):
    """Invalid input; the message is returned to the caller with a 400."""


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, default=str, indent=1),
        status_code=status,
        mimetype="application/json",
        headers=headers,
    )


def error(status: int, message: str) -> func.HttpResponse:
    return _json({"error": message}, status)


# The function key's query parameter (the header is ``x-functions-key``): the host checks it,
# every route accepts it, no handler sees it, nothing logs it.
KEY_PARAM = "code"


def handle(handler, ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    """Run a handler, turning validation errors into 400s and surprises into logged 500s.

    The handler gets the request without the function key (``?code=``), and only parameters
    that SQL can hold (no NUL, valid Unicode). Logs name the route and method only: never the
    query string (the key) or headers.
    """
    try:
        req = _without_key(req)
        _check_parameters(req)
        return handler(ctx, req)
    except (BadRequest, RunRequestError) as exc:
        return error(400, str(exc))
    except RunQueueError as exc:
        return _json({"error": str(exc)}, 503, headers={"Retry-After": "60"})
    except Exception:
        log.exception(
            "unhandled error in HTTP handler",
            extra={"route": _route(req), "method": req.method},
        )
        return error(500, "internal error; see the function's logs")


def _route(req: func.HttpRequest) -> str:
    """The request's path, without the query string (which may hold the function key)."""
    return urlsplit(req.url).path


def _without_key(req: func.HttpRequest) -> func.HttpRequest:
    if KEY_PARAM not in req.params:
        return req
    parts = urlsplit(req.url)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != KEY_PARAM])
    return func.HttpRequest(
        req.method,
        urlunsplit(parts._replace(query=query)),
        headers=dict(req.headers),
        params={k: v for k, v in req.params.items() if k != KEY_PARAM},
        route_params=dict(req.route_params),
        body=req.get_body(),
    )


def _check_parameters(req: func.HttpRequest) -> None:
    """Refuse query and route parameters no database can compare: a NUL (PostgreSQL refuses
    it in text) or a lone surrogate (not encodable as UTF-8)."""
    for kind, values in (("route", req.route_params), ("query", req.params)):
        for name, value in values.items():
            shown = repr(name[:40])[1:-1]
            if "\x00" in name or "\x00" in value:
                raise BadRequest(f"{kind} parameter {shown} contains a NUL character")
            try:
                name.encode("utf-8")
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest(
                    f"{kind} parameter {shown} is not valid Unicode (a lone surrogate)"
                ) from None


def parse_time(name: str, value: Any) -> datetime:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be an ISO-8601 string")
    shown = repr(value[:64]) + ("..." if len(value) > 64 else "")
    try:
        return parse_utc(value)
    except ValueError as exc:
        if "outside the years" in str(exc):
            raise BadRequest(f"{name}={shown} is outside the years 1-9999 in UTC") from None
        raise BadRequest(f"{name}={shown} is not an ISO-8601 timestamp") from None


def _limit(req: func.HttpRequest, default: int = 100) -> int:
    raw = req.params.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"limit={raw!r} is not an integer") from None
    if not 1 <= value <= MAX_LIST:
        raise BadRequest(f"limit must be between 1 and {MAX_LIST}")
    return value


def _id(kind: str, value: Any) -> str:
    try:
        return check_id(kind, value)
    except InvalidReading as exc:
        raise BadRequest(str(exc)) from None


def _status_url(req: func.HttpRequest, run_id: str) -> str:
    base = req.url.split("/api/", 1)[0] if "/api/" in req.url else ""
    return f"{base}/api/runs/{run_id}"


def parse_start_request(ctx: AppContext, body: dict[str, Any]) -> tuple[Window, RunFilters, bool]:
    """Validate a start-run body into (window, filters, rerun); see OPENAPI for the fields."""
    unknown = sorted(set(body) - START_FIELDS)
    if unknown:
        raise BadRequest(
            f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(START_FIELDS))}"
        )
    now = utcnow()
    schedule = ctx.settings.scoring_schedule
    if "window_end" in body:
        end = parse_time("window_end", body["window_end"])
        if end > now + FUTURE_TOLERANCE:
            raise BadRequest(f"window_end {end.isoformat()}Z is in the future")
        if end < EARLIEST:  # no reading is older (and window arithmetic would overflow)
            raise BadRequest(f"window_end must not be before {EARLIEST:%Y-%m-%d}")
    else:
        end = latest_window(schedule, now).end
    if "window_minutes" in body:
        minutes = body["window_minutes"]
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0:
            raise BadRequest("window_minutes must be a positive number")
        if isinstance(minutes, float) and not math.isfinite(minutes):
            raise BadRequest("window_minutes must be a finite number")
        bucket_minutes = ctx.settings.bucket_seconds / 60
        if minutes < bucket_minutes:
            raise BadRequest(
                f"window_minutes must be at least one bucket ({bucket_minutes:g} minutes, "
                "BUCKET_SECONDS)"
            )
        if minutes > ctx.settings.max_window_hours * 60:
            raise BadRequest(
                f"window_minutes={str(minutes)[:24]} is longer than MAX_WINDOW_HOURS="
                f"{ctx.settings.max_window_hours:g} hours"
            )
        window = Window(end - timedelta(minutes=minutes), end)
    elif "window_end" in body:
        window = (
            window_ending(schedule, end)
            if _on_schedule(schedule, end)
            else Window(end - latest_window(schedule, now).length, end)
        )
    else:
        window = latest_window(schedule, now)
    devices = body.get("devices", [])
    if not isinstance(devices, list):
        raise BadRequest("devices must be a list of device ids")
    sensors = body.get("sensors", [])
    if not isinstance(sensors, list):
        raise BadRequest('sensors must be a list of {"device": ..., "sensor": ...} objects')
    pairs = []
    for item in sensors:
        if not isinstance(item, dict) or set(item) != {"device", "sensor"}:
            raise BadRequest("each sensor must be an object with exactly device and sensor")
        pairs.append((_id("device", item["device"]), _id("sensor", item["sensor"])))
    rerun = body.get("rerun", False)
    if not isinstance(rerun, bool):
        raise BadRequest("rerun must be true or false")
    filters = RunFilters(tuple(sorted({_id("device", d) for d in devices})), tuple(sorted(pairs)))
    return window, filters, rerun


def _on_schedule(schedule: str, end: datetime) -> bool:
    from shared.runs.windows import last_occurrence

    return last_occurrence(schedule, end) == end


def start_run_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    raw = req.get_body() or b"{}"
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadRequest("the body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit number
        raise BadRequest(f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    window, filters, rerun = parse_start_request(ctx, body)
    # Records the run and queues its preparation: the response does not wait for it (an HTTP
    # trigger is cut at 230 s; preparing a large fleet's day takes longer).
    run, created = request_run(ctx, window, "http", filters, rerun=rerun)
    url = _status_url(req, run.run_id)
    return _json(
        {
            "run_id": run.run_id,
            "status": run.status,
            "created": created,
            "status_url": url,
            "window": run.as_dict()["window"],
        },
        202 if created else 200,
        headers={"Location": url},
    )


def get_run_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    run_id = req.route_params.get("run_id", "")
    run = records.get_run(ctx.engine, run_id)
    if run is None:
        return error(404, f"no run {run_id!r}")
    # At most once per RECONCILE_INTERVAL_SECONDS per run: clients poll this, and each
    # reconciliation of an Azure ML run is a call to its management API.
    run = reconcile_run_if_due(ctx, run)
    body = run.as_dict()
    body["errors"] = records.run_errors_of(ctx.engine, run_id, limit=100)
    body["report_url"] = _status_url(req, run_id) + "/report"
    # Notifications this run's recording raised (shared.alerts): a failing receiver shows here.
    from shared.alerts import run_alert_summary

    body["alerts"] = run_alert_summary(ctx.engine, run_id)
    return _json(body)


def list_runs_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    status = req.params.get("status")
    if status is not None and status not in records.STATUSES:
        raise BadRequest(f"status must be one of {', '.join(records.STATUSES)}")
    runs = records.list_runs(ctx.engine, status=status, limit=_limit(req, 20))
    return _json({"runs": [r.as_dict() for r in runs]})


ANOMALY_PARAMS = {"device", "sensor", "since", "until", "status", "run_id", "min_score", "limit"}


def _event_body(req: func.HttpRequest, event) -> dict[str, Any]:
    base = req.url.split("/api/", 1)[0] if "/api/" in req.url else ""
    return {
        **event.as_dict(),
        "url": f"{base}/api/anomalies/{event.event_id}",
        # The report of the run that raised the alert (the onset), and of the latest one.
        "report_url": f"{base}/api/runs/{event.first_run_id}/report",
        "last_report_url": f"{base}/api/runs/{event.last_run_id}/report",
    }


def anomalies_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    """Anomaly events (one per incident), newest onset first; see OPENAPI for the filters."""
    from shared.events import STATUSES, EventFilters, list_events

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
        device=_id("device", params["device"]) if "device" in params else None,
        sensor=_id("sensor", params["sensor"]) if "sensor" in params else None,
        since=since,
        until=until,
        status=status,
        run_id=params.get("run_id"),
        min_score=min_score,
    )
    events = list_events(ctx.engine, filters, limit=_limit(req))
    from shared.feedback import feedback_for  # each event's latest verdict (shared.feedback)

    with ctx.engine.connect() as conn:
        given = feedback_for(conn, [e.event_id for e in events])
    return _json(
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
    from shared.events import event_buckets, get_event

    event_id = req.route_params.get("event_id", "")
    event = get_event(ctx.engine, event_id)
    if event is None:
        return error(404, f"no anomaly event {event_id!r}")
    buckets, truncated = event_buckets(ctx.engine, event)
    # Operators' verdicts on it, oldest first (shared.feedback).
    from shared.feedback import feedback_for

    with ctx.engine.connect() as conn:
        given = [f.as_dict() for f in feedback_for(conn, [event_id]).get(event_id, [])]
    return _json(
        {
            **_event_body(req, event),
            "verdict": given[-1]["verdict"] if given else None,
            "feedback": given,
            "buckets": buckets,
            "buckets_truncated": truncated,
        }
    )


def report_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    from shared.report import build_run_report

    run_id = req.route_params.get("run_id", "")
    page = build_run_report(ctx, run_id)
    if page is None:
        return error(404, f"no run {run_id!r}")
    return func.HttpResponse(page, status_code=200, mimetype="text/html", charset="utf-8")


def openapi_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    from shared.routes import openapi_document

    # OPENAPI below, with the declared routes (alerts, feedback: shared.routes) merged in.
    return _json(openapi_document(OPENAPI))


_ERROR = {"$ref": "#/components/schemas/Error"}
_RUN = {"$ref": "#/components/schemas/Run"}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Sensor batch scoring",
        "version": "1.0.0",
        "description": "Start scoring runs, watch them and query anomalies. Every call needs a "
        "function key (`code` query parameter or `x-functions-key` header); `code` is accepted "
        "on every operation besides its own parameters, and is never logged. Malformed input "
        "is a 400 with an `error` message.",
    },
    "servers": [{"url": "/api"}],
    "security": [{"functionKey": []}, {"functionKeyQuery": []}],
    "paths": {
        "/runs": {
            "post": {
                "summary": "Start an on-demand run",
                "operationId": "startRun",
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/StartRun"}}
                    },
                },
                "description": "Records the run (status `pending`) and queues its preparation "
                "(aggregate, write chunks, submit), which a queue-triggered function does; the "
                "response does not wait for it. Idempotent: the same window and filters return "
                "the same run (200) unless `rerun` is true. Poll `status_url` (also in the "
                "`Location` header).",
                "responses": {
                    "202": {
                        "description": "Run recorded and queued; poll status_url",
                        "headers": {
                            "Location": {
                                "description": "The run's status URL",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Started"}}
                        },
                    },
                    "200": {
                        "description": "A run for this window and filters exists already",
                        "headers": {
                            "Location": {
                                "description": "The run's status URL",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Started"}}
                        },
                    },
                    "400": {
                        "description": "Invalid request",
                        "content": {"application/json": {"schema": _ERROR}},
                    },
                    "503": {
                        "description": "The run could not be queued (it is recorded as failed "
                        "with the reason); retry with `rerun` later",
                        "content": {"application/json": {"schema": _ERROR}},
                    },
                },
            },
            "get": {
                "summary": "List runs, newest first",
                "operationId": "listRuns",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(records.STATUSES)},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIST,
                            "default": 20,
                        },
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Runs",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"runs": {"type": "array", "items": _RUN}},
                                }
                            }
                        },
                    },
                    "400": {
                        "description": "Invalid request",
                        "content": {"application/json": {"schema": _ERROR}},
                    },
                },
            },
        },
        "/runs/{run_id}": {
            "get": {
                "summary": "A run's status, counts, timings and errors",
                "description": "Reconciles the run with its executor's job (a failed Azure ML "
                "job fails the run) at most once per RECONCILE_INTERVAL_SECONDS per run, so "
                "polling does not call Azure ML on every request.",
                "operationId": "getRun",
                "parameters": [
                    {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "The run",
                        "content": {"application/json": {"schema": _RUN}},
                    },
                    "404": {
                        "description": "No such run",
                        "content": {"application/json": {"schema": _ERROR}},
                    },
                },
            },
        },
        "/runs/{run_id}/report": {
            "get": {
                "summary": "The run's report: an HTML page with plots of anomalous sensors",
                "operationId": "runReport",
                "parameters": [
                    {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "HTML report",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "404": {
                        "description": "No such run",
                        "content": {"application/json": {"schema": _ERROR}},
                    },
                },
            },
        },
        "/anomalies": {
            "get": {
                "summary": "Anomaly events (one per incident), newest onset first",
                "description": "Flagged buckets of a sensor fewer than EVENT_GAP_BUCKETS "
                "unflagged buckets apart form one event; its onset (`start`) is the alert. "
                "`since`/`until` select events that overlap the period. `run_id` selects the "
                "events of the sensors the run scored that overlap its window. The buckets of "
                "an event are at `url` (`GET /anomalies/{event_id}`).",
                "operationId": "listAnomalies",
                "parameters": [
                    {"name": "device", "in": "query", "schema": {"type": "string"}},
                    {"name": "sensor", "in": "query", "schema": {"type": "string"}},
                    {"name": "run_id", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "since",
                        "in": "query",
                        "description": "Only events that end after this time",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                    {
                        "name": "until",
                        "in": "query",
                        "description": "Only events that start before this time",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["open", "closed"]},
                    },
                    {
                        "name": "min_score",
                        "in": "query",
                        "description": "Only events whose peak score is at least this",
                        "schema": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIST,
                            "default": 100,
                        },
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Events",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "events": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/AnomalyEvent"},
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "400": {
                        "description": "Invalid request",
                        "content": {"application/json": {"schema": _ERROR}},
                    },
                },
            },
        },
        "/anomalies/{event_id}": {
            "get": {
                "summary": "One anomaly event with every scored bucket of its span",
                "description": "Buckets from `start` to `end`, flagged or not, as the newest "
                "run scored them (at most 5000; `buckets_truncated` says when cut).",
                "operationId": "getAnomaly",
                "parameters": [
                    {
                        "name": "event_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The event and its buckets",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/AnomalyEventDetail"}
                            }
                        },
                    },
                    "404": {
                        "description": "No such event",
                        "content": {"application/json": {"schema": _ERROR}},
                    },
                },
            },
        },
    },
    "components": {
        "securitySchemes": {
            "functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
            "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code"},
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            },
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
                    "status": {"type": "string", "enum": list(records.STATUSES)},
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
                        "enum": ["open", "closed"],
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
                        "allOf": [{"$ref": "#/components/schemas/Explanation"}],
                        "nullable": True,
                        "description": "Why: the explanation of the peak bucket (null when "
                        "it was scored before explanations existed)",
                    },
                },
            },
            "Explanation": {
                "type": "object",
                "description": "Why a bucket was flagged (scoring.explain). kind `baseline`: the "
                "default detector's own comparison that decided the flag; kind "
                "`feature_deviation`: for other estimators, which features deviated most from "
                "the model's training distribution (robust z-scores), not the model's own "
                "reasoning.",
                "required": ["kind", "score", "model_version", "summary"],
                "properties": {
                    "kind": {"type": "string", "enum": ["baseline", "feature_deviation"]},
                    "summary": {"type": "string", "description": "One sentence for people"},
                    "comparison": {
                        "type": "string",
                        "description": "baseline: level_vs_recent, level_vs_time_of_day, "
                        "min_vs_recent, max_vs_recent, spread_vs_recent, novel_min, novel_max "
                        "or novel_spread; feature_deviation: <feature>_vs_training",
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
                        "description": "feature_deviation: false when the model was trained "
                        "before training statistics were stored",
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
                    {"$ref": "#/components/schemas/AnomalyEvent"},
                    {
                        "type": "object",
                        "properties": {
                            "buckets": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/Prediction"},
                            },
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
                        "allOf": [{"$ref": "#/components/schemas/Explanation"}],
                        "nullable": True,
                        "description": "Why the bucket was flagged (flagged buckets)",
                    },
                },
            },
        },
    },
}
