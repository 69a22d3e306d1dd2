"""Alerts on SQLite and PostgreSQL with Azurite: notifications of anomaly events reach a real
HTTPS webhook receiver and an Event Grid stand-in on loopback (``tests/receivers.py``) exactly
once per state change, signed; redeliveries and re-runs notify nobody again; a failing receiver
never fails a run and shows in its status; rules and mutes over HTTP and the CLI.

What cannot exist here, and is replaced at its boundary only: Event Grid itself (no emulator
exists; the stand-in speaks its CloudEvents publish API and checks what arrives), and Entra ID,
whose token the publisher would get from ``DefaultAzureCredential`` (a fixed bearer token
instead). Predictions files are crafted as in ``tests/test_events.py`` (which buckets are
flagged is the point), and delivered through the real blob-trigger function.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
from azure.core.credentials import AccessToken

from shared.alerts import delivery, rules
from shared.alerts.delivery import verify_signature
from shared.alerts.outbox import EVENTGRID_TARGET
from shared.clock import utcnow
from shared.db.schema import alert_outbox
from shared.events import events_for
from shared.runs import records
from shared.settings import AlertSettings
from tests.receivers import Receiver, self_signed
from tests.test_events import HOUR, NEXT_HOUR, A, B, record, redeliver_without_etag
from tests.test_http import call

SECRET = "s3cret-for-the-tests-0123456789"


class FixedToken:
    """Stands in for Entra ID (DefaultAzureCredential cannot get a token here)."""

    def get_token(self, *scopes, **kwargs):
        return AccessToken("token-for-the-event-grid-stand-in", 4102444800)


@pytest.fixture
def tls(tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path)
    # requests and azure-core verify the receivers' certificate against this bundle.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    monkeypatch.setattr(delivery, "_credential", lambda settings: FixedToken())
    return cert, key


@pytest.fixture
def hook(tls):
    receiver = Receiver(*tls).start()
    yield receiver
    receiver.stop()


@pytest.fixture
def grid(tls):
    receiver = Receiver(*tls, eventgrid=True).start()
    yield receiver
    receiver.stop()


def with_alerts(ctx, **alerts):
    """EVENT_GAP_BUCKETS=5 (splits inside a window) and the given alert settings."""
    ctx.settings = dataclasses.replace(
        ctx.settings, event_gap_buckets=5, alerts=AlertSettings(**alerts)
    )
    return ctx


@pytest.fixture
def alerting(ctx, hook, grid):
    return with_alerts(
        ctx,
        eventgrid_endpoint=f"{grid.url}/api/events",
        webhook_urls=(f"{hook.url}/hooks/ops",),
        webhook_secret=SECRET,
        base_url="https://scoring.example.net",
    )


def hook_events(hook: Receiver) -> list[dict]:
    """Accepted webhook bodies (CloudEvents), after checking each one's signature."""
    out = []
    for r in hook.delivered():
        assert r.headers["content-type"].startswith("application/cloudevents+json")
        assert verify_signature(
            SECRET, r.body, r.headers["x-alert-timestamp"], r.headers["x-alert-signature"]
        )
        assert not verify_signature(
            "another-secret-0123456",
            r.body,
            r.headers["x-alert-timestamp"],
            r.headers["x-alert-signature"],
        )
        body = r.json()
        assert body["id"] == r.headers["x-alert-id"]
        out.append(body)
    return out


def kinds(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["type"].rsplit(".", 1)[1], e["subject"]) for e in events]


def test_each_state_change_reaches_each_receiver_once_signed(alerting, hook, grid):
    ctx = alerting
    run_id = record(ctx, HOUR, {A: {10: 0.7, 11: 0.8}, B: {58: 0.6, 59: 0.6}})
    (a_event,) = events_for(ctx.engine, *A)
    # A's event closed within the hour (gap 5); B's is open at the window's end.
    sent = hook_events(hook)
    assert sorted(kinds(sent)) == [
        ("closed", "device-001/sensor-01"),
        ("opened", "device-001/sensor-01"),
        ("opened", "device-001/sensor-02"),
    ]
    opened = next(
        e
        for e in sent
        if e["type"] == "sensors.anomaly.opened" and e["subject"].endswith("sensor-01")
    )
    assert opened["specversion"] == "1.0"
    assert opened["source"] == "https://scoring.example.net/api/anomalies"
    data = opened["data"]
    assert data["event_id"] == a_event.event_id and data["run_id"] == run_id
    assert data["start"] == "2026-03-02T11:10:00Z" and data["end"] == "2026-03-02T11:12:00Z"
    assert data["peak_score"] == 0.8 and data["explanation"] is None
    assert data["report_url"] == f"https://scoring.example.net/api/runs/{run_id}/report"
    # Within an event, a receiver hears "opened" before "closed".
    a_ids = [e["type"] for e in sent if e["subject"].endswith("sensor-01")]
    assert a_ids == ["sensors.anomaly.opened", "sensors.anomaly.closed"]
    # The Event Grid stand-in got the same notifications as one CloudEvents batch, authorised.
    (publish,) = grid.delivered()
    assert publish.headers["authorization"] == "Bearer token-for-the-event-grid-stand-in"
    assert sorted(kinds(grid.published_events())) == sorted(kinds(sent))
    assert {e["id"] for e in grid.published_events()}.isdisjoint({e["id"] for e in sent})

    # A redelivered blob and a re-run of the same window notify nobody again.
    redeliver_without_etag(ctx, run_id)
    record(ctx, HOUR, {A: {10: 0.7, 11: 0.8}, B: {58: 0.6, 59: 0.6}}, attempt=2)
    delivery.deliver_pending(ctx.engine, ctx.settings)
    assert len(hook.requests) == 3 and len(grid.requests) == 1

    # The next hour: B's event continues and escalates (0.97: critical), then closes.
    record(ctx, NEXT_HOUR, {B: {0: 0.97}})
    later = hook_events(hook)[3:]
    assert kinds(later) == [("updated", "device-001/sensor-02"), ("closed", "device-001/sensor-02")]
    assert later[0]["data"]["severity"] == "critical" and later[0]["data"]["peak_score"] == 0.97
    assert len(grid.published_events()) == 5
    with ctx.engine.connect() as conn:
        states = conn.execute(sa.select(alert_outbox.c.state, alert_outbox.c.status)).all()
    assert sorted(states) == sorted(
        [(s, "sent") for s in ["opened", "closed", "opened", "updated:critical", "closed"]] * 2
    )


def test_a_failing_receiver_never_fails_the_run_and_is_retried(
    alerting, hook, grid, env, monkeypatch, capsys
):
    ctx = alerting
    hook.status = 503
    run_id = record(ctx, HOUR, {A: {10: 0.7}})  # asserts the run completed
    assert records.get_run(ctx.engine, run_id).status == records.COMPLETED
    assert hook.delivered() == [] and len(hook.requests) == 1  # opened; closed waits for it
    assert len(grid.published_events()) == 2  # the other receiver is not held up
    status, body = call("get_run", route_params={"run_id": run_id})
    assert status == 200
    assert body["alerts"]["pending"] == 2 and body["alerts"]["sent"] == 2
    (failing,) = body["alerts"]["errors"]
    assert "HTTP 503" in failing["last_error"] and failing["state"] == "opened"
    from shared.report import build_run_report

    page = build_run_report(ctx, run_id)
    assert "HTTP 503" in page and "Alerts" in page

    # Not due yet (backoff): the timer leaves it; once due, it is sent, in order, once.
    delivery.deliver_pending(ctx.engine, ctx.settings)
    assert len(hook.requests) == 1
    hook.status = 200
    with ctx.engine.begin() as conn:
        conn.execute(sa.update(alert_outbox).values(next_attempt_at=utcnow()))
    from shared.local.host import user_function

    user_function("deliver_alerts")(None)
    assert kinds(hook_events(hook)) == [
        ("opened", "device-001/sensor-01"),
        ("closed", "device-001/sensor-01"),
    ]
    user_function("deliver_alerts")(None)
    assert len(hook.delivered()) == 2
    from shared import cli

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["status", run_id]) == 0
    status_out = json.loads(capsys.readouterr().out)
    # Delivered in the end: the CLI's status agrees, and the old error is gone.
    assert status_out["alerts"]["sent"] == 4 and status_out["alerts"]["errors"] == []


def test_a_receiver_that_keeps_failing_ends_failed_after_the_last_attempt(alerting, hook, grid):
    ctx = alerting
    hook.status = 500
    record(ctx, HOUR, {A: {10: 0.7}})
    for _ in range(delivery.MAX_ATTEMPTS):
        with ctx.engine.begin() as conn:
            conn.execute(sa.update(alert_outbox).values(next_attempt_at=utcnow()))
        delivery.deliver_pending(ctx.engine, ctx.settings)
    status, listed = call("list_alerts", params={"status": "failed"})
    assert status == 200
    (failed,) = listed["alerts"]
    assert failed["state"] == "opened" and failed["attempts"] == delivery.MAX_ATTEMPTS
    assert failed["target"].startswith("webhook-") and "HTTP 500" in failed["last_error"]
    tries = [r for r in hook.requests if r.json()["type"] == "sensors.anomaly.opened"]
    assert len(tries) == delivery.MAX_ATTEMPTS


def test_backoff_doubles_up_to_an_hour():
    assert [delivery.backoff(n).total_seconds() / 60 for n in (1, 2, 3, 7, 8, 20)] == [
        1,
        2,
        4,
        60,
        60,
        60,
    ]


def test_signature_rejects_a_changed_body_or_an_old_timestamp():
    body, ts = b'{"a": 1}', "1700000000"
    signature = delivery.sign(SECRET, ts, body)
    assert verify_signature(SECRET, body, ts, signature, now=1700000010)
    assert not verify_signature(SECRET, b'{"a": 2}', ts, signature, now=1700000010)
    assert not verify_signature(SECRET, body, ts, signature, now=1700000000 + 3600)
    assert not verify_signature(SECRET, body, "soon", signature, now=1700000010)


def test_teams_format_posts_an_adaptive_card(ctx, hook):
    with_alerts(
        ctx,
        webhook_urls=(f"{hook.url}/teams",),
        webhook_secret=SECRET,
        webhook_format="teams",
        base_url="https://scoring.example.net",
    )
    record(ctx, HOUR, {A: {10: 0.9}})
    first = hook.delivered()[0]
    assert first.headers["content-type"] == "application/json"
    message = first.json()
    (attachment,) = message["attachments"]
    assert message["type"] == "message"
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert card["body"][0]["text"] == "Anomaly opened: device-001/sensor-01"
    assert card["actions"][0]["url"].startswith("https://scoring.example.net/api/runs/")


def test_rules_decide_which_events_alert(ctx, hook):
    with_alerts(ctx, webhook_urls=(f"{hook.url}/h",), webhook_secret=SECRET)
    # Fleet: peak at least 0.75; device-001/sensor-02: at least 3 minutes; quiet 11:30-11:45.
    status, fleet = call("set_alert_rule", "POST", "alerts/rules", {"min_score": 0.75})
    assert status == 200 and fleet["rule_id"] == "fleet" and fleet["scope"] == "fleet"
    status, rule = call(
        "set_alert_rule",
        "POST",
        "alerts/rules",
        {"device": "device-001", "sensor": "sensor-02", "min_duration_minutes": 3},
    )
    assert status == 200 and rule["scope"] == "sensor"
    call("set_alert_rule", "POST", "alerts/rules", {"quiet_start": "11:30", "quiet_end": "11:45"})
    status, listed = call("list_alert_rules", path="alerts/rules")
    assert [r["scope"] for r in listed["rules"]] == ["fleet", "sensor"]
    assert listed["rules"][0]["min_score"] == 0.75 and listed["rules"][0]["quiet_end"] == "11:45"

    flags = {
        A: {5: 0.6, 20: 0.9, 35: 0.99},  # 0.6 below 0.75; 11:35 in quiet hours; 11:20 alerts
        B: {10: 0.9, 50: 0.9, 51: 0.9, 52: 0.9},  # 1 minute: too short; 3 minutes: alerts
    }
    record(ctx, HOUR, flags)
    opened = {
        (e["subject"], e["data"]["start"])
        for e in hook_events(hook)
        if e["type"] == "sensors.anomaly.opened"
    }
    assert opened == {
        ("device-001/sensor-01", "2026-03-02T11:20:00Z"),
        ("device-001/sensor-02", "2026-03-02T11:50:00Z"),
    }

    status, reply = call(
        "set_alert_rule", "POST", "alerts/rules", {"quiet_start": "25:00", "quiet_end": "01:00"}
    )
    assert status == 400 and "quiet_start" in reply["error"]
    status, reply = call("set_alert_rule", "POST", "alerts/rules", {"min_score": 2})
    assert status == 400 and "min_score" in reply["error"]
    status, reply = call("set_alert_rule", "POST", "alerts/rules", {"sensor": "sensor-01"})
    assert status == 400 and "needs its device" in reply["error"]
    status, reply = call("set_alert_rule", "POST", "alerts/rules", {"minimum": 1})
    assert status == 400 and "unknown field" in reply["error"]
    status, _ = call("delete_alert_rule", "DELETE", route_params={"rule_id": rule["rule_id"]})
    assert status == 200
    status, _ = call("delete_alert_rule", "DELETE", route_params={"rule_id": rule["rule_id"]})
    assert status == 404


def test_a_mute_silences_its_scope_until_it_expires(ctx, hook):
    with_alerts(ctx, webhook_urls=(f"{hook.url}/h",), webhook_secret=SECRET)
    status, muted = call(
        "mute_alerts",
        "POST",
        "alerts/mute",
        {"device": "device-001", "sensor": "sensor-01", "minutes": 60, "reason": "maintenance"},
    )
    assert status == 200 and muted["mute_reason"] == "maintenance"
    record(ctx, HOUR, {A: {10: 0.9}, B: {20: 0.9}})
    assert {e["subject"] for e in hook_events(hook)} == {"device-001/sensor-02"}
    # Unmuted: the muted sensor's next event alerts.
    status, _ = call(
        "unmute_alerts", "POST", "alerts/unmute", {"device": "device-001", "sensor": "sensor-01"}
    )
    assert status == 200
    record(ctx, NEXT_HOUR, {A: {30: 0.9}})
    assert ("opened", "device-001/sensor-01") in kinds(hook_events(hook))
    # An expired mute is no mute.
    with ctx.engine.begin() as conn:
        rule = rules.mute(conn, "device-001", None, utcnow() - timedelta(minutes=1))
        book = rules.RuleBook.load(conn, 0.5)
    assert not book.effective("device-001", "sensor-01").muted(utcnow())
    assert rule.scope == "device"
    status, reply = call(
        "mute_alerts", "POST", "alerts/mute", {"minutes": 5, "until": "2030-01-01T00:00:00Z"}
    )
    assert status == 400 and "not both" in reply["error"]
    status, reply = call("mute_alerts", "POST", "alerts/mute", {"until": "2001-01-01T00:00:00Z"})
    assert status == 400 and "future" in reply["error"]


def test_rules_and_mutes_from_the_cli(ctx, env, monkeypatch, capsys):
    from shared import cli

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["alerts", "rules", "set", "--device", "device-001", "--min-score", "0.8"]) == 0
    assert (
        cli.main(
            ["alerts", "mute", "--device", "device-002", "--minutes", "30", "--reason", "swap"]
        )
        == 0
    )
    assert cli.main(["alerts", "rules", "list"]) == 0
    out = capsys.readouterr().out
    assert "device-001" in out and "0.8" in out and "device-002" in out and "swap" in out
    with ctx.engine.connect() as conn:
        book = rules.RuleBook.load(conn, 0.5)
    assert book.effective("device-001", "x").min_score == 0.8
    assert book.effective("device-002", "x").muted(utcnow())
    assert cli.main(["alerts", "unmute", "--device", "device-002"]) == 0
    with ctx.engine.connect() as conn:
        assert not rules.RuleBook.load(conn, 0.5).effective("device-002", "x").muted(utcnow())
    assert cli.main(["alerts", "rules", "set", "--min-score", "3"]) == 2
    assert "min_score" in capsys.readouterr().err
    assert cli.main(["alerts", "list"]) == 0


def test_no_receiver_configured_queues_nothing(ctx):
    with_alerts(ctx)
    record(ctx, HOUR, {A: {10: 0.9}})
    with ctx.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(alert_outbox)).scalar() == 0


def test_webhooks_must_be_https():
    from shared.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="HTTPS only"):
        Settings.from_env(
            {"ALERTS_WEBHOOK_URLS": "http://example.net/h", "ALERTS_WEBHOOK_SECRET": SECRET}
        )
    with pytest.raises(SettingsError, match="ALERTS_WEBHOOK_SECRET"):
        Settings.from_env({"ALERTS_WEBHOOK_URLS": "https://example.net/h"})
    with pytest.raises(SettingsError, match="HTTPS only"):
        Settings.from_env(
            {"ALERTS_EVENTGRID_ENDPOINT": "http://t.westeurope-1.eventgrid.azure.net/api/events"}
        )


def test_list_alerts_filters_and_validates(alerting, hook, grid):
    ctx = alerting
    run_id = record(ctx, HOUR, {A: {10: 0.9}})
    status, body = call("list_alerts", params={"run_id": run_id})
    assert status == 200
    assert {(a["target"] == EVENTGRID_TARGET, a["state"]) for a in body["alerts"]} == {
        (True, "opened"),
        (True, "closed"),
        (False, "opened"),
        (False, "closed"),
    }
    assert all(
        a["status"] == "sent" and a["type"].startswith("sensors.anomaly.") for a in body["alerts"]
    )
    status, body = call("list_alerts", params={"status": "lost"})
    assert status == 400
    status, body = call("list_alerts", params={"colour": "red"})
    assert status == 400 and "unknown parameter" in body["error"]


def test_an_announced_event_that_a_rerun_removes_is_closed_as_withdrawn(ctx, hook):
    """A re-run that moves an open event's onset deletes the event (its id is a hash of the
    onset): the receiver that was told it opened is told it closed, once."""
    with_alerts(ctx, webhook_urls=(f"{hook.url}/h",), webhook_secret=SECRET)
    record(ctx, HOUR, {A: {58: 0.9, 59: 0.9}})
    (first,) = events_for(ctx.engine, *A)
    assert first.status == "open"
    run_id = record(ctx, HOUR, {A: {59: 0.9}}, attempt=2)
    (second,) = events_for(ctx.engine, *A)
    assert second.event_id != first.event_id
    sent = hook_events(hook)
    assert [(e["type"], e["data"]["event_id"]) for e in sent] == [
        ("sensors.anomaly.opened", first.event_id),
        ("sensors.anomaly.closed", first.event_id),
        ("sensors.anomaly.opened", second.event_id),
    ] or [(e["type"], e["data"]["event_id"]) for e in sent] == [
        ("sensors.anomaly.opened", first.event_id),
        ("sensors.anomaly.opened", second.event_id),
        ("sensors.anomaly.closed", first.event_id),
    ]
    withdrawn = next(e for e in sent if e["type"] == "sensors.anomaly.closed")
    assert withdrawn["data"]["status"] == "withdrawn" and withdrawn["data"]["run_id"] == run_id
    redeliver_without_etag(ctx, run_id)
    delivery.deliver_pending(ctx.engine, ctx.settings)
    assert len(hook.requests) == 3
