"""Routes are declared once (``shared.routes``): what ``function_app`` registers, what is declared
and what the OpenAPI document describes are one set, and the document states what the handlers
check. No database or storage is needed: these read the declarations, the app's function
builders (as the host would index them) and the handlers' own constants.
"""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from shared.routes import (
    MAX_LIST,
    OPENAPI_ROUTE,
    Route,
    declared_routes,
    declared_schemas,
    openapi_document,
    registered_routes,
)
from tests.helpers import functions_by_name


def _http_functions() -> dict[str, tuple[str, str]]:
    """Every HTTP-triggered function of ``function_app``: name -> (method, route)."""
    found = {}
    for name, function in functions_by_name().items():
        for binding in function.get_dict_repr()["bindings"]:
            if binding["type"] == "httpTrigger":
                (method,) = [str(getattr(m, "value", m)) for m in binding["methods"]]
                found[name] = (method.upper(), binding["route"])
    return found


def _documented(doc: dict) -> set[tuple[str, str]]:
    return {
        (method.upper(), path.removeprefix("/"))
        for path, item in doc["paths"].items()
        for method in item
    }


def test_registered_declared_and_documented_routes_are_one_set():
    """A route added to ``function_app`` by hand (not declared), or declared but left out of the
    document, fails here: the three sets of (method, path) must agree."""
    registered = _http_functions()
    declared = {route.name: (route.method, route.path) for route in registered_routes()}
    assert registered == declared
    documented = _documented(openapi_document())
    assert documented == {(r.method, r.path) for r in declared_routes()}
    # Only the document's own route is served and not described in it.
    assert set(declared.values()) - documented == {(OPENAPI_ROUTE.method, OPENAPI_ROUTE.path)}
    assert [r for r in registered_routes() if not r.documented] == [OPENAPI_ROUTE]


def test_the_served_routes_include_every_older_route():
    """The routes that were written by hand in function_app keep their names, paths and
    operation ids (clients generated from the document call them by operationId)."""
    older = {"start_run", "list_runs", "get_run", "run_report", "list_anomalies", "get_anomaly"}
    served = _http_functions()
    assert {name: served[name] for name in [*older, "openapi"]} == {
        "start_run": ("POST", "runs"),
        "list_runs": ("GET", "runs"),
        "get_run": ("GET", "runs/{run_id}"),
        "run_report": ("GET", "runs/{run_id}/report"),
        "list_anomalies": ("GET", "anomalies"),
        "get_anomaly": ("GET", "anomalies/{event_id}"),
        "openapi": ("GET", "openapi.json"),
    }
    ids = {
        route.name: route.operation()["operationId"]
        for route in declared_routes()
        if route.operation_id
    }
    assert ids == {
        "start_run": "startRun",
        "list_runs": "listRuns",
        "get_run": "getRun",
        "run_report": "runReport",
        "list_anomalies": "listAnomalies",
        "get_anomaly": "getAnomaly",
    }


def test_every_route_has_a_handler_and_unique_names():
    routes = registered_routes()
    assert len({r.name for r in routes}) == len(routes)
    assert len({(r.method, r.path) for r in routes}) == len(routes)
    operation_ids = [r.operation()["operationId"] for r in routes]
    assert len(set(operation_ids)) == len(operation_ids)
    for route in routes:
        assert callable(route.resolve()), route.handler
        assert route.method in ("GET", "POST", "DELETE")


def test_the_document_is_valid_openapi_3():
    doc = openapi_document()
    assert doc["openapi"].startswith("3.")
    validate(doc)  # also resolves every $ref
    assert set(doc["components"]["schemas"]) == set(declared_schemas())


def test_a_route_declared_twice_is_refused():
    route = declared_routes()[0]
    with pytest.raises(ValueError, match="declared twice"):
        openapi_document([route, route])
    doc = openapi_document([route])
    assert list(doc["paths"]) == ["/" + route.path]


def test_path_parameters_are_documented_from_the_template():
    route = Route(
        name="x",
        method="GET",
        path="a/{first}/b/{second}",
        handler="m:f",
        summary="s",
        parameters=({"name": "q", "in": "query", "schema": {"type": "string"}},),
    )
    params = route.operation()["parameters"]
    assert [(p["name"], p["in"], p.get("required")) for p in params] == [
        ("first", "path", True),
        ("second", "path", True),
        ("q", "query", None),
    ]


def _route(name: str) -> Route:
    (route,) = [r for r in declared_routes() if r.name == name]
    return route


def _query_names(name: str) -> set[str]:
    return {p["name"] for p in _route(name).parameters if p["in"] == "query"}


def _enum(name: str, parameter: str) -> list[str]:
    (param,) = [p for p in _route(name).parameters if p["name"] == parameter]
    return param["schema"]["enum"]


def test_documented_parameters_and_bodies_are_what_the_handlers_accept():
    """Handlers refuse unknown parameters and fields; the document lists exactly the accepted
    ones, and its enums are the values the handlers check against."""
    from shared.alerts.http import ALERT_PARAMS, MUTE_BODY, RULE_BODY
    from shared.alerts.outbox import STATUSES as ALERT_STATUSES
    from shared.events import STATUSES as EVENT_STATUSES
    from shared.events.http import ANOMALY_PARAMS
    from shared.feedback import VERDICTS
    from shared.feedback.http import FEEDBACK_BODY, SUMMARY_PARAMS
    from shared.runs import records
    from shared.runs.http import START_FIELDS

    assert _query_names("list_anomalies") == ANOMALY_PARAMS
    assert _query_names("list_alerts") == ALERT_PARAMS
    assert _query_names("feedback_summary") == SUMMARY_PARAMS
    schemas = declared_schemas()
    for schema, accepted in (
        ("StartRun", START_FIELDS),
        ("AlertRuleInput", RULE_BODY),
        ("Mute", MUTE_BODY),
        ("FeedbackInput", FEEDBACK_BODY),
    ):
        assert set(schemas[schema]["properties"]) == accepted, schema
        assert schemas[schema]["additionalProperties"] is False
    assert _enum("list_runs", "status") == list(records.STATUSES)
    assert schemas["Run"]["properties"]["status"]["enum"] == list(records.STATUSES)
    assert _enum("list_anomalies", "status") == list(EVENT_STATUSES)
    assert schemas["AnomalyEvent"]["properties"]["status"]["enum"] == list(EVENT_STATUSES)
    assert _enum("list_alerts", "status") == list(ALERT_STATUSES)
    assert schemas["AnomalyEvent"]["properties"]["verdict"]["enum"] == list(VERDICTS)
    assert schemas["FeedbackInput"]["properties"]["verdict"]["enum"] == list(VERDICTS)
    for route in declared_routes():
        for param in route.parameters:
            if param["name"] == "limit":
                assert param["schema"]["maximum"] == MAX_LIST, route.name
