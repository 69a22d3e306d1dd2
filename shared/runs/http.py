"""HTTP handlers of runs: start one, list them, get one (declared in :mod:`.routes`).

A run's report is served by :mod:`shared.report_http`. Handlers take the request (without the
function key) and return a response; ``shared.api.handle`` turns ``BadRequest`` into a 400.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import azure.functions as func

from shared.api import (
    BadRequest,
    api_url,
    checked_id,
    error,
    json_object,
    json_response,
    limit_param,
    parse_time,
)
from shared.clock import utcnow
from shared.context import AppContext
from shared.ingestion.validation import EARLIEST
from shared.runs import records
from shared.runs.reconcile import reconcile_run_if_due
from shared.runs.records import RunFilters
from shared.runs.service import RunQueueError, RunRequestError, request_run
from shared.runs.windows import Window, last_occurrence, latest_window, window_ending

START_FIELDS = {"window_end", "window_minutes", "devices", "sensors", "rerun"}
FUTURE_TOLERANCE = timedelta(minutes=1)


def _status_url(req: func.HttpRequest, run_id: str) -> str:
    return api_url(req, f"runs/{run_id}")


def parse_start_request(ctx: AppContext, body: dict[str, Any]) -> tuple[Window, RunFilters, bool]:
    """Validate a start-run body into (window, filters, rerun); schema ``StartRun``."""
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
        pairs.append((checked_id("device", item["device"]), checked_id("sensor", item["sensor"])))
    rerun = body.get("rerun", False)
    if not isinstance(rerun, bool):
        raise BadRequest("rerun must be true or false")
    filters = RunFilters(
        tuple(sorted({checked_id("device", d) for d in devices})), tuple(sorted(pairs))
    )
    return window, filters, rerun


def _on_schedule(schedule: str, end: datetime) -> bool:
    return last_occurrence(schedule, end) == end


def start_run_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    window, filters, rerun = parse_start_request(ctx, json_object(req))
    # Records the run and queues its preparation: the response does not wait for it (an HTTP
    # trigger is cut at 230 s; preparing a large fleet's day takes longer).
    try:
        run, created = request_run(ctx, window, "http", filters, rerun=rerun)
    except RunRequestError as exc:
        raise BadRequest(str(exc)) from None
    except RunQueueError as exc:  # the run is recorded as failed with the reason
        return error(503, str(exc), headers={"Retry-After": "60"})
    url = _status_url(req, run.run_id)
    return json_response(
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
    return json_response(body)


def list_runs_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    status = req.params.get("status")
    if status is not None and status not in records.STATUSES:
        raise BadRequest(f"status must be one of {', '.join(records.STATUSES)}")
    runs = records.list_runs(ctx.engine, status=status, limit=limit_param(req, 20))
    return json_response({"runs": [r.as_dict() for r in runs]})
