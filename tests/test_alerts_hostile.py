"""Hostile input on the alert and feedback routes (SQLite and PostgreSQL with Azurite): any body,
query and route parameters give a 2xx, 400 or 404 with a message, never a 5xx, and nothing is
logged as an unhandled error; the same property-based check as ``tests/test_http_hostile.py``
(whose strategies it reuses) over the alert and feedback routes declared in ``shared.routes``."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared.alerts.http import ALERT_PARAMS, MUTE_BODY, RULE_BODY
from shared.feedback.http import FEEDBACK_BODY, SUMMARY_PARAMS
from shared.routes import declared_routes, registered_routes
from tests.test_http_hostile import HANDLERS as OLDER_HANDLERS
from tests.test_http_hostile import _hostile_text, _json, call, log_lines, request  # noqa: F401


def _body(fields):
    return st.one_of(
        st.fixed_dictionaries({}, optional={k: _json for k in sorted(fields)}).map(
            lambda d: json.dumps(d, allow_nan=True).encode()
        ),
        _json.map(lambda d: json.dumps(d, allow_nan=True).encode()),
        st.binary(max_size=100),
    )


def _params(keys):
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=10), _hostile_text, max_size=5)


NOTHING = st.just(b"")
NO_ROUTE = st.just({})
HANDLERS = {
    "list_alert_rules": (NOTHING, _params(["code"]), NO_ROUTE),
    "set_alert_rule": (_body(RULE_BODY), _params(["code"]), NO_ROUTE),
    "delete_alert_rule": (
        NOTHING,
        _params(["code"]),
        st.fixed_dictionaries({"rule_id": _hostile_text}),
    ),
    "mute_alerts": (_body(MUTE_BODY), _params(["code"]), NO_ROUTE),
    "unmute_alerts": (_body({"device", "sensor"}), _params(["code"]), NO_ROUTE),
    "list_alerts": (NOTHING, _params(sorted(ALERT_PARAMS | {"code"})), NO_ROUTE),
    "give_feedback": (
        _body(FEEDBACK_BODY),
        _params(["code"]),
        st.fixed_dictionaries({"event_id": _hostile_text}),
    ),
    "list_feedback": (
        NOTHING,
        _params(["code"]),
        st.fixed_dictionaries({"event_id": _hostile_text}),
    ),
    "feedback_summary": (NOTHING, _params(sorted(SUMMARY_PARAMS | {"code"})), NO_ROUTE),
    "list_sensitivities": (NOTHING, _params(["code"]), NO_ROUTE),
}


def test_every_declared_route_is_checked():
    """Here or in tests/test_http_hostile.py (runs, anomaly events, the OpenAPI document)."""
    assert not set(HANDLERS) & set(OLDER_HANDLERS)
    assert {r.name for r in registered_routes()} == set(HANDLERS) | set(OLDER_HANDLERS)


@pytest.mark.parametrize("function", sorted(HANDLERS))
def test_property_no_input_is_a_server_error(ctx, log_lines, function):  # noqa: F811
    route = next(r for r in declared_routes() if r.name == function)
    bodies, params, routes = HANDLERS[function]

    @hsettings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(body=bodies, query=params, route_params=routes)
    def check(body, query, route_params):
        status, reply = call(function, request(route.method, route.path, body, query, route_params))
        assert status in (200, 201, 400, 404), (status, reply)
        if status >= 400:
            assert isinstance(reply, dict) and reply.get("error"), reply

    check()
    assert not [line for line in log_lines if "unhandled error" in line]


@pytest.mark.parametrize(
    "function, route_params, body",
    [
        ("set_alert_rule", {}, {"comment": "x\x00y"}),
        ("set_alert_rule", {}, {"comment": "\ud800"}),
        ("mute_alerts", {}, {"minutes": 5, "reason": "x\x00y"}),
        ("mute_alerts", {}, {"minutes": 1e308}),
        ("mute_alerts", {}, {"until": "9999-12-31T23:59:59Z"}),
        ("set_alert_rule", {}, {"min_duration_minutes": float("nan")}),
        ("give_feedback", {"event_id": "ev-x"}, {"verdict": "confirmed", "author": "a\x00"}),
    ],
)
def test_text_no_database_can_hold_is_a_400(ctx, function, route_params, body):
    """NUL (PostgreSQL refuses it in text) and lone surrogates (not UTF-8) in free text."""
    route = next(r for r in declared_routes() if r.name == function)
    raw = json.dumps(body, allow_nan=True).encode()
    status, reply = call(function, request(route.method, route.path, raw, {}, route_params))
    assert status in (200, 400, 404), reply
