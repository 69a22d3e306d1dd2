"""The HTTP API through the Functions' user functions, invoked with real
``azure.functions.HttpRequest`` objects (the host, which would route them, cannot run here)."""

import json
from datetime import timedelta
from unittest import mock

import azure.functions as func
import pytest

from shared.local.host import deliver_predictions, deliver_run_requests, user_function
from shared.runs import records
from tests import scenario

BASE = "http://localhost:7071/api"


def call(
    name: str, method: str = "GET", path: str = "", body=None, params=None, route_params=None
) -> tuple[int, dict | str]:
    raw = (
        body
        if isinstance(body, bytes)
        else (json.dumps(body).encode() if body is not None else b"")
    )
    req = func.HttpRequest(
        method, f"{BASE}/{path}", body=raw, params=params or {}, route_params=route_params or {}
    )
    resp = user_function(name)(req)
    text = resp.get_body().decode()
    try:
        return resp.status_code, json.loads(text)
    except json.JSONDecodeError:
        return resp.status_code, text


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not valid JSON"),
        ([1, 2], "must be a JSON object"),
        ({"window_end": "yesterday"}, "not an ISO-8601"),
        ({"window_end": "2999-01-01T00:00:00Z"}, "in the future"),
        ({"window_minutes": 60 * 24 * 30}, "longer than MAX_WINDOW_HOURS"),
        ({"window_minutes": -5}, "positive number"),
        ({"window": "last hour"}, "unknown field(s): window"),
        ({"devices": "device-001"}, "devices must be a list"),
        ({"devices": ["bad/id"]}, "characters outside"),
        ({"sensors": [{"device": "d"}]}, "exactly device and sensor"),
        ({"rerun": "yes"}, "rerun must be true or false"),
    ],
)
def test_start_run_rejects_bad_input(ctx, body, message):
    status, reply = call("start_run", "POST", "runs", body)
    assert status == 400
    assert message in reply["error"]


def test_start_status_list_and_anomalies(ctx):
    sc = scenario.build(ctx, devices=2, sensors=2)
    status, started = call(
        "start_run",
        "POST",
        "runs",
        {"window_end": sc.window.end.isoformat() + "Z", "window_minutes": 60},
    )
    assert status == 202 and started["created"] and started["status"] == records.PENDING
    run_id = started["run_id"]
    assert started["status_url"] == f"{BASE}/runs/{run_id}"
    # What the host does next: the queue trigger prepares and submits, the blob trigger records.
    assert deliver_run_requests(ctx) == [(mock.ANY, "done")]
    deliver_predictions(ctx, run_id)

    status, again = call(
        "start_run",
        "POST",
        "runs",
        {"window_end": sc.window.end.isoformat() + "Z", "window_minutes": 60},
    )
    assert status == 200 and again["run_id"] == run_id and not again["created"]
    status, rerun = call(
        "start_run",
        "POST",
        "runs",
        {"window_end": sc.window.end.isoformat() + "Z", "window_minutes": 60, "rerun": True},
    )
    assert status == 202 and rerun["run_id"] != run_id

    status, run = call("get_run", route_params={"run_id": run_id}, path=f"runs/{run_id}")
    assert status == 200
    assert run["status"] == records.COMPLETED
    assert run["counts"]["sensors"] == 4 and run["counts"]["predictions"] == 240
    assert run["window"]["start"] == sc.window.start.isoformat() + "Z"
    assert run["trigger"] == "http" and run["errors"] == []

    status, listed = call("list_runs", params={"status": "completed", "limit": "5"})
    assert status == 200 and [r["run_id"] for r in listed["runs"]] == [run_id]

    # One event per incident: together they hold every flagged bucket of the run.
    status, anomalies = call("list_anomalies", params={"run_id": run_id, "limit": "500"})
    assert status == 200
    events = anomalies["events"]
    assert 0 < len(events) <= run["counts"]["anomalies"]
    assert sum(e["n_buckets"] for e in events) == run["counts"]["anomalies"]
    first = events[0]
    assert first["start"].endswith("Z") and first["report_url"] == f"{BASE}/runs/{run_id}/report"
    device = first["device"]
    status, some = call(
        "list_anomalies",
        params={
            "device": device,
            "since": sc.window.start.isoformat(),
            "until": (sc.window.end + timedelta(hours=1)).isoformat(),
        },
    )
    assert status == 200 and {a["device"] for a in some["events"]} == {device}


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("list_runs", {"status": "bogus"}, "status must be one of"),
        ("list_runs", {"limit": "0"}, "limit must be between"),
        ("list_runs", {"limit": "ten"}, "not an integer"),
        ("list_anomalies", {"since": "soon"}, "not an ISO-8601"),
        ("list_anomalies", {"since": "2026-01-02", "until": "2026-01-01"}, "since must be before"),
        ("list_anomalies", {"status": "bogus"}, "status must be one of open, closed"),
        ("list_anomalies", {"min_score": "high"}, "not a number"),
        ("list_anomalies", {"min_score": "2"}, "between 0 and 1"),
        ("list_anomalies", {"device": "a b"}, "characters outside"),
        ("list_anomalies", {"colour": "red"}, "unknown parameter(s): colour"),
    ],
)
def test_queries_reject_bad_parameters(ctx, name, params, message):
    status, reply = call(name, params=params)
    assert status == 400 and message in reply["error"]


def test_unknown_run_is_404(ctx):
    status, reply = call("get_run", route_params={"run_id": "run-nope"})
    assert status == 404 and "no run" in reply["error"]


def test_openapi_document_is_valid(ctx):
    from openapi_spec_validator import validate

    from tests.helpers import functions_by_name

    status, spec = call("openapi", path="openapi.json")
    assert status == 200
    validate(spec)
    from shared.routes import declared_routes

    assert set(spec["paths"]) == {
        "/runs",
        "/runs/{run_id}",
        "/runs/{run_id}/report",
        "/anomalies",
        "/anomalies/{event_id}",
        # Derived from the declared routes (alerts, feedback), as registered with the app.
        "/alerts",
        "/alerts/rules",
        "/alerts/rules/{rule_id}",
        "/alerts/mute",
        "/alerts/unmute",
        "/anomalies/{event_id}/feedback",
        "/feedback/summary",
        "/feedback/sensitivities",
    }
    documented = {
        (path, method.upper())
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "delete")
    }
    for route in declared_routes():
        assert ("/" + route.path, route.method) in documented
        binding = functions_by_name()[route.name].get_dict_repr()["bindings"][0]
        methods = [getattr(m, "value", m) for m in binding["methods"]]
        assert binding["route"] == route.path and methods == [route.method]


def test_http_functions_use_function_keys():
    from tests.helpers import functions_by_name

    for name in (
        "start_run",
        "list_runs",
        "get_run",
        "run_report",
        "list_anomalies",
        "get_anomaly",
        "openapi",
    ):
        (trigger,) = [
            b
            for b in functions_by_name()[name].get_dict_repr()["bindings"]
            if b["type"] == "httpTrigger"
        ]
        assert (
            str(
                trigger["authLevel"].value
                if hasattr(trigger["authLevel"], "value")
                else trigger["authLevel"]
            ).lower()
            == "function"
        )
