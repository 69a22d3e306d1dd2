"""Operator feedback on SQLite and PostgreSQL with Azurite: verdicts stored with the event and
shown by the API, the CLI and the report; ``expected`` suppresses alerts over its span;
``false_alarm`` raises the sensor's sensitivity (written into the next chunks, used by the
scoring step) and lists the span for training; the operator's precision summary. On a
simulated fleet, a false alarm is not raised again after the feedback while the real injected
anomalies of the other sensors still are.
"""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from shared.db.schema import predictions, sensor_sensitivity
from shared.events import events_for, run_events
from shared.feedback import false_alarm_spans
from shared.feedback.service import MAX_SENSITIVITY, SENSITIVITY_COLUMN, with_sensitivity
from shared.local.host import deliver_predictions
from shared.runs import records
from tests.test_alerts import SECRET, hook, hook_events, tls, with_alerts  # noqa: F401 - fixtures
from tests.test_events import HOUR, NEXT_HOUR, A, B, record
from tests.test_http import call


@pytest.fixture
def gap5(ctx):
    """EVENT_GAP_BUCKETS=5 (events split inside one window), no alert receiver."""
    return with_alerts(ctx)


def give(event_id: str, body: dict) -> tuple[int, dict]:
    return call(
        "give_feedback",
        "POST",
        f"anomalies/{event_id}/feedback",
        body,
        route_params={"event_id": event_id},
    )


def test_verdicts_are_stored_with_the_event_and_shown(gap5):
    ctx = gap5
    record(ctx, HOUR, {A: {10: 0.7, 11: 0.95}, B: {40: 0.6}})
    (a,) = events_for(ctx.engine, *A)
    (b,) = events_for(ctx.engine, *B)
    status, given = give(a.event_id, {"verdict": "confirmed", "author": "ana", "comment": "pump"})
    assert status == 201 and given["verdict"] == "confirmed" and given["author"] == "ana"
    assert given["span_start"] == "2026-03-02T11:10:00Z" and given["sensitivity"] is None
    status, given = give(b.event_id, {"verdict": "false_alarm"})
    assert status == 201 and given["sensitivity"] == pytest.approx(0.61)

    status, detail = call("get_anomaly", route_params={"event_id": a.event_id})
    assert status == 200 and detail["verdict"] == "confirmed"
    assert [f["comment"] for f in detail["feedback"]] == ["pump"]
    status, listed = call("list_anomalies")
    assert {e["event_id"]: e["verdict"] for e in listed["events"]} == {
        a.event_id: "confirmed",
        b.event_id: "false_alarm",
    }
    # A later verdict replaces the earlier one; the history stays.
    give(a.event_id, {"verdict": "false_alarm", "comment": "it was a test"})
    status, history = call("list_feedback", route_params={"event_id": a.event_id})
    assert [f["verdict"] for f in history["feedback"]] == ["confirmed", "false_alarm"]
    status, summary = call("feedback_summary", params={"period": "day"})
    assert status == 200
    assert summary["fleet"]["false_alarm"] == 2 and summary["fleet"]["confirmed"] == 0
    assert summary["fleet"]["false_alarm_share"] == 1.0
    assert summary["over_time"] == [
        {
            "period_start": "2026-03-02T00:00:00Z",
            "confirmed": 0,
            "false_alarm": 2,
            "expected": 0,
            "confirmed_share": 0.0,
            "false_alarm_share": 1.0,
        }
    ]
    status, mine = call("feedback_summary", params={"device": "device-001", "sensor": "sensor-02"})
    assert [s["sensor"] for s in mine["sensors"]] == ["sensor-02"]
    # The sensor of the 0.95 alarm: just above it, at most 0.95.
    status, listed = call("list_sensitivities", path="feedback/sensitivities")
    levels = {(s["device"], s["sensor"]): s["sensitivity"] for s in listed["sensitivities"]}
    assert levels == {A: MAX_SENSITIVITY, B: pytest.approx(0.61)}
    with ctx.engine.connect() as conn:
        assert false_alarm_spans(conn, [A]) == [(*A, a.start, a.end)]
        assert false_alarm_spans(conn, None, start=b.end) == []
        assert len(false_alarm_spans(conn)) == 2

    from shared.report import build_run_report

    page = build_run_report(ctx, a.first_run_id)
    assert "Feedback (2 of 2 events)" in page and "it was a test" in page
    assert "false-alarm share" in page


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"verdict": "maybe"}, 400, "verdict must be one of"),
        ({}, 400, "verdict must be one of"),
        ({"verdict": "confirmed", "mood": "x"}, 400, "unknown field"),
        (
            {"verdict": "confirmed", "span_start": "2026-03-02T00:00Z", "span_end": "2026-03-03"},
            400,
            "with verdict 'expected' only",
        ),
        (
            {"verdict": "expected", "span_start": "2026-03-03T00:00Z", "span_end": "2026-03-02"},
            400,
            "before its end",
        ),
        ({"verdict": "expected", "span_start": "2026-03-03T00:00Z"}, 400, "go together"),
        ({"verdict": "confirmed", "comment": 5}, 400, "comment must be a string"),
        ({"verdict": "confirmed", "author": "x" * 201}, 400, "author must be"),
        ({"verdict": "confirmed", "comment": "a\x00b"}, 400, "NUL"),
        ({"verdict": "confirmed", "author": "\ud800"}, 400, "not valid Unicode"),
    ],
)
def test_bad_feedback_is_a_400(gap5, body, status, message):
    record(gap5, HOUR, {A: {10: 0.7}})
    (a,) = events_for(gap5.engine, *A)
    got, reply = give(a.event_id, body)
    assert got == status and message in reply["error"]


def test_feedback_on_an_unknown_event_is_404(ctx):
    status, reply = give("ev-nope", {"verdict": "confirmed"})
    assert status == 404 and "no anomaly event" in reply["error"]


def test_expected_suppresses_that_sensors_alerts_over_its_span(ctx, hook):  # noqa: F811
    with_alerts(ctx, webhook_urls=(f"{hook.url}/h",), webhook_secret=SECRET)
    record(ctx, HOUR, {A: {10: 0.9}})
    (a,) = events_for(ctx.engine, *A)
    status, _ = give(
        a.event_id,
        {
            "verdict": "expected",
            "comment": "maintenance until 13:00",
            "span_start": "2026-03-02T11:00:00Z",
            "span_end": "2026-03-02T13:00:00Z",
        },
    )
    assert status == 201
    before = len(hook.delivered())
    record(ctx, NEXT_HOUR, {A: {20: 0.9}, B: {20: 0.9}})
    later = hook_events(hook)[before:]
    assert {e["subject"] for e in later} == {"device-001/sensor-02"}


def test_the_cli_gives_and_summarises_feedback(gap5, env, monkeypatch, capsys):
    from shared import cli

    record(gap5, HOUR, {A: {10: 0.7}})
    (a,) = events_for(gap5.engine, *A)
    for name, value in {**env, "EVENT_GAP_BUCKETS": "5"}.items():
        monkeypatch.setenv(name, value)
    argv = ["feedback", "give", a.event_id, "--verdict", "false_alarm", "--author", "bo"]
    assert cli.main(argv) == 0
    assert '"sensitivity": 0.71' in capsys.readouterr().out
    assert cli.main(["feedback", "summary"]) == 0
    out = capsys.readouterr().out
    assert "fleet" in out and "device-001  sensor-01" in out
    assert cli.main(["feedback", "show", a.event_id]) == 0
    assert "false_alarm" in capsys.readouterr().out
    assert cli.main(["feedback", "sensitivities"]) == 0
    assert "0.71" in capsys.readouterr().out
    assert cli.main(["feedback", "give", "ev-nope", "--verdict", "confirmed"]) == 2


def test_with_sensitivity_adds_the_column_only_where_needed():
    import pyarrow as pa

    part = pa.table({"device": ["d", "d", "e"], "sensor": ["s", "s", "s"], "x": [1, 2, 3]})
    assert with_sensitivity(part, {}, 0.5) is part
    assert with_sensitivity(part, {("z", "z"): 0.9}, 0.5) is part
    column = with_sensitivity(part, {("e", "s"): 0.8}, 0.5).column(SENSITIVITY_COLUMN)
    assert column.to_pylist() == [0.5, 0.5, 0.8]


def test_a_false_alarm_is_not_raised_again_and_real_anomalies_still_are(ctx):
    """Simulated fleet with injected anomalies, scored through the scheduled-run path. The
    operator calls one sensor's event a false alarm; the same window scored again (a re-run:
    the very pattern repeats) flags nothing of that sensor over the event's span, while every
    other sensor's events, real injected anomalies, are found as before."""
    from shared.runs.service import start_run
    from tests import scenario

    sc = scenario.build(ctx, devices=2, sensors=3)
    run, _ = start_run(ctx, sc.window, "cli")
    deliver_predictions(ctx, run.run_id)
    events = run_events(ctx.engine, run.run_id)
    assert len({(e.device, e.sensor) for e in events}) >= 2
    # The alarm the operator rejects: the highest-peaked event below the cap.
    alarm = max(
        (e for e in events if e.peak_score < MAX_SENSITIVITY - 0.01), key=lambda e: e.peak_score
    )
    others = {
        (e.device, e.sensor, e.start, e.n_buckets)
        for e in events
        if (e.device, e.sensor) != (alarm.device, alarm.sensor)
    }
    status, given = give(alarm.event_id, {"verdict": "false_alarm", "author": "ops"})
    assert status == 201 and given["sensitivity"] > alarm.peak_score

    rerun, created = start_run(ctx, sc.window, "cli", rerun=True)
    assert created
    deliver_predictions(ctx, rerun.run_id)
    assert records.get_run(ctx.engine, rerun.run_id).status == records.COMPLETED
    # The chunk carried the sensor's raised sensitivity, row by row.
    chunk = pq.read_table(
        io.BytesIO(
            ctx.store.download(ctx.settings.chunks_container, f"runs/{rerun.run_id}/c00000.parquet")
        )
    )
    levels = dict(
        zip(
            zip(
                chunk.column("device").to_pylist(),
                chunk.column("sensor").to_pylist(),
                strict=True,
            ),
            chunk.column(SENSITIVITY_COLUMN).to_pylist(),
            strict=True,
        )
    )
    assert levels[(alarm.device, alarm.sensor)] == pytest.approx(given["sensitivity"])
    assert {v for k, v in levels.items() if k != (alarm.device, alarm.sensor)} == {
        ctx.settings.sensitivity
    }
    with ctx.engine.connect() as conn:
        flagged_again = conn.execute(
            sa.select(sa.func.count()).where(
                predictions.c.run_id == rerun.run_id,
                predictions.c.device == alarm.device,
                predictions.c.sensor == alarm.sensor,
                predictions.c.bucket_start >= alarm.start,
                predictions.c.bucket_start < alarm.end,
                predictions.c.is_anomaly == sa.true(),
            )
        ).scalar()
        stored = conn.execute(sa.select(sensor_sensitivity.c.reason)).scalars().all()
    assert flagged_again == 0
    assert alarm.event_id in stored[0]
    after = run_events(ctx.engine, rerun.run_id)
    assert not any(
        (e.device, e.sensor) == (alarm.device, alarm.sensor)
        and e.start < alarm.end
        and alarm.start < e.end
        for e in after
    )
    assert {
        (e.device, e.sensor, e.start, e.n_buckets)
        for e in after
        if (e.device, e.sensor) != (alarm.device, alarm.sensor)
    } == others
    # Every injected anomaly of the other sensors is still found (a flag in its span).
    truth = {(d, s) for d, s, _ in sc.truth()} - {(alarm.device, alarm.sensor)}
    found = {(e.device, e.sensor) for e in after}
    assert truth and truth <= found


def test_migration_0005_on_a_database_at_the_previous_head(sql_url):
    """A deployment one revision back gets the four tables; downgrading removes them again."""
    from alembic import command

    from shared.db import migrate
    from shared.db.engine import engine_for_url

    new = {"alert_rules", "alert_outbox", "anomaly_feedback", "sensor_sensitivity"}
    engine = engine_for_url(sql_url)
    migrate.upgrade(engine, "0005")
    command.downgrade(migrate.alembic_config(engine), "-1")
    assert not new & set(sa.inspect(engine).get_table_names())
    migrate.upgrade(engine, "0005")
    inspector = sa.inspect(engine)
    assert new <= set(inspector.get_table_names())
    outbox = {i["name"]: i["column_names"] for i in inspector.get_indexes("alert_outbox")}
    assert outbox["ix_alert_outbox_status_next_attempt_at"] == ["status", "next_attempt_at"]
    assert inspector.get_pk_constraint("sensor_sensitivity")["constrained_columns"] == [
        "device",
        "sensor",
    ]
    engine.dispose()


def test_migration_0005_for_sql_server_uses_datetime2_and_identity():
    from shared.db import migrate

    script = migrate.offline_sql("mssql+pyodbc://", "0004:0005")
    assert "CREATE TABLE alert_outbox" in script and "CREATE TABLE anomaly_feedback" in script
    for column in ("next_attempt_at", "created_at"):
        assert f"{column} DATETIME2(6) NOT NULL" in script
    assert "feedback_id INTEGER NOT NULL IDENTITY" in script
    assert "payload VARCHAR(max) NOT NULL" in script
