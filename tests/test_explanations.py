"""Explanations of anomaly events on SQLite + Azurite and PostgreSQL + Azurite: the scoring
step's explanations (``scoring.explain``) are stored with the predictions, each event takes its
peak bucket's, and the API, the CLI and the alert payloads return it.

A simulated fleet goes through the product's own paths (Event Hubs function, training, a run
with the local executor, the blob trigger); crafted predictions files (as in
``tests/test_events.py``) pin the hand-off from predictions to events and the checks on hostile
files. The webhook receiver is a real HTTPS server on loopback (``tests/receivers.py``).
"""

from __future__ import annotations

import dataclasses
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from shared.blobs import predictions_blob
from shared.db.schema import anomaly_events, predictions
from shared.events import events_for, run_events
from shared.local.host import deliver_predictions
from shared.runs import records
from shared.runs.recording import record_predictions_blob
from shared.settings import AlertSettings
from tests import test_events
from tests.test_alerts import SECRET, hook, hook_events, tls  # noqa: F401 - fixtures
from tests.test_events import HOUR, A, B, record

COMPARISONS = {
    "level_vs_recent",
    "level_vs_time_of_day",
    "min_vs_recent",
    "max_vs_recent",
    "spread_vs_recent",
    "novel_min",
    "novel_max",
    "novel_spread",
}


def test_simulated_events_say_why_in_api_cli_alerts(ctx, hook, env, monkeypatch, capsys):  # noqa: F811
    from shared import cli
    from shared.runs.service import start_run
    from tests import scenario
    from tests.test_http import call

    sc = scenario.build(ctx, devices=2, sensors=3)
    ctx.settings = dataclasses.replace(
        ctx.settings,
        alerts=AlertSettings(
            webhook_urls=(f"{hook.url}/hooks/ops",),
            webhook_secret=SECRET,
            base_url="https://scoring.example.net",
        ),
    )
    run, _ = start_run(ctx, sc.window, "cli")
    deliver_predictions(ctx, run.run_id)
    run_id = run.run_id
    events = run_events(ctx.engine, run_id)
    assert events

    # ---- stored: each flagged prediction has an explanation, and only those; the band covers
    # every bucket of a sensor with a flag and no other sensor's.
    with ctx.engine.connect() as conn:
        rows = (
            conn.execute(sa.select(predictions).where(predictions.c.run_id == run_id))
            .mappings()
            .all()
        )
    flagged_sensors = {(r["device"], r["sensor"]) for r in rows if r["is_anomaly"]}
    for r in rows:
        assert (r["explanation"] is not None) == bool(r["is_anomaly"])
        has_band = r["expected_low"] is not None and r["expected_high"] is not None
        assert has_band == ((r["device"], r["sensor"]) in flagged_sensors)
        if has_band:
            assert r["expected_low"] <= r["expected_high"]
    by_key = {(r["device"], r["sensor"], r["bucket_start"]): r for r in rows}

    # ---- each event: its peak bucket's explanation, in numbers, with the model version
    for event in events:
        why = event.explanation
        peak = by_key.get((event.device, event.sensor, event.peak_bucket))
        if peak is None:  # an event continued from before this window: not this run's
            continue
        assert why == json.loads(peak["explanation"])
        assert why["kind"] == "baseline" and why["comparison"] in COMPARISONS
        assert why["direction"] in ("above", "below")
        assert why["model_version"] == peak["model_version"]
        assert why["score"] == pytest.approx(event.peak_score, rel=1e-5)
        assert why["expected_low"] <= why["expected_high"]
        assert isinstance(why["observed"], float) and why["summary"]
        if why["rule"] != "novelty" and why["comparison"].startswith("level"):
            outside = (
                why["observed"] > why["expected_high"] or why["observed"] < why["expected_low"]
            )
            assert outside or why["rule"] == "sustained"
    event = max(events, key=lambda e: e.peak_score)

    # ---- a redelivery recomputes the same explanation: the events table does not change
    with ctx.engine.connect() as conn:
        before = conn.execute(sa.select(anomaly_events).order_by(anomaly_events.c.event_id)).all()
    name = predictions_blob(run_id, "c00000")
    data = ctx.store.download(ctx.settings.predictions_container, name)
    assert record_predictions_blob(ctx, name, data, etag=None).outcome == "recorded"
    with ctx.engine.connect() as conn:
        after = conn.execute(sa.select(anomaly_events).order_by(anomaly_events.c.event_id)).all()
    assert after == before

    # ---- the API
    status, body = call("list_anomalies", params={"run_id": run_id})
    assert status == 200
    listed = {e["event_id"]: e for e in body["events"]}
    assert listed[event.event_id]["explanation"] == event.explanation
    status, detail = call(
        "get_anomaly", path=f"anomalies/{event.event_id}", route_params={"event_id": event.event_id}
    )
    assert status == 200 and detail["explanation"] == event.explanation
    flagged = [b for b in detail["buckets"] if b["is_anomaly"]]
    assert flagged and all(b["explanation"]["kind"] == "baseline" for b in flagged)
    assert all(b["expected_low"] is not None for b in detail["buckets"])

    # ---- the CLI
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["anomalies", "show", event.event_id]) == 0
    out = capsys.readouterr().out
    version = event.explanation["model_version"]
    assert f"why: {event.explanation['summary']} [model version {version}]" in out
    assert '"explanation": {' in out and "expected_low" in out
    assert cli.main(["anomalies", "--run-id", run_id]) == 0
    out = capsys.readouterr().out
    assert f"{event.explanation['comparison']} {event.explanation['direction']}" in out

    # ---- the alert payloads (CloudEvents to the webhook): the same explanation
    sent = {e["data"]["event_id"]: e for e in hook_events(hook) if e["type"].endswith("opened")}
    assert sent, "no alert reached the receiver"
    for event_id, cloud_event in sent.items():
        stored = next(e for e in events if e.event_id == event_id)
        assert stored.explanation is not None
        assert cloud_event["data"]["explanation"] == stored.explanation


def _with_explanations(table: pa.Table, texts) -> pa.Table:
    return table.append_column("explanation", pa.array(texts, pa.string()))


@pytest.fixture
def explained_files(monkeypatch):
    """Crafted predictions files with an explanation per flagged bucket naming its minute."""
    plain = test_events.predictions_file

    def with_explanations(window, flags, sensors=(A, B), chunk=False):
        data = plain(window, flags, sensors, chunk)
        if chunk:
            return data
        table = pq.read_table(io.BytesIO(data))
        texts = []
        for device, sensor in sensors:
            flagged = flags.get((device, sensor), {})
            for m in range(60):
                texts.append(
                    None
                    if m not in flagged
                    else json.dumps({"kind": "baseline", "summary": f"minute {m}", "score": 0.9})
                )
        table = _with_explanations(table, texts).replace_schema_metadata(table.schema.metadata)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return sink.getvalue().to_pybytes()

    monkeypatch.setattr(test_events, "predictions_file", with_explanations)
    return with_explanations


def test_an_event_takes_its_peak_buckets_explanation(ctx, explained_files):
    ctx.settings = dataclasses.replace(ctx.settings, event_gap_buckets=5)
    record(ctx, HOUR, {A: {10: 0.7, 11: 0.95, 13: 0.8}})
    (event,) = events_for(ctx.engine, *A)
    assert event.peak_score == 0.95 and event.explanation["summary"] == "minute 11"
    # A later run with a higher peak: the event's explanation follows its new peak.
    record(ctx, HOUR, {A: {10: 0.7, 11: 0.6, 13: 0.99}}, attempt=2)
    (event,) = events_for(ctx.engine, *A)
    assert event.peak_score == 0.99 and event.explanation["summary"] == "minute 13"


def test_files_without_explanations_are_recorded_with_none(ctx):
    """A predictions file of an older scoring step (no explanation columns) is recorded; its
    events and buckets say nothing rather than fail."""
    ctx.settings = dataclasses.replace(ctx.settings, event_gap_buckets=5)
    run_id = record(ctx, HOUR, {A: {10: 0.7}})
    (event,) = events_for(ctx.engine, *A)
    assert event.explanation is None and event.as_dict()["explanation"] is None
    with ctx.engine.connect() as conn:
        stored = conn.execute(
            sa.select(predictions.c.expected_low, predictions.c.explanation).where(
                predictions.c.run_id == run_id
            )
        ).all()
    assert stored and all(low is None and text is None for low, text in stored)
    from shared.report import build_run_report

    assert "no explanation (scored before explanations existed)" in build_run_report(ctx, run_id)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("not json", "is not a JSON object"),
        ("[1, 2]", "is not a JSON object"),
        (json.dumps({"summary": "x" * 9000}), "longer than"),
    ],
)
def test_a_hostile_explanation_refuses_the_file(ctx, monkeypatch, text, reason):
    """Explanations are shown to people and sent to receivers: one that is not a JSON object
    (or is huge) refuses the whole file with the reason; nothing of it is stored."""
    plain = test_events.predictions_file

    def hostile(window, flags, sensors=(A, B), chunk=False):
        data = plain(window, flags, sensors, chunk)
        if chunk:
            return data
        table = pq.read_table(io.BytesIO(data))
        texts = [text if i == 10 else None for i in range(table.num_rows)]
        table = _with_explanations(table, texts).replace_schema_metadata(table.schema.metadata)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return sink.getvalue().to_pybytes()

    monkeypatch.setattr(test_events, "predictions_file", hostile)
    with pytest.raises(AssertionError):  # record() expects a completed run
        record(ctx, HOUR, {A: {10: 0.9}})
    (run,) = records.list_runs(ctx.engine)
    assert run.status == records.FAILED
    errors = records.run_errors_of(ctx.engine, run.run_id)
    assert any(reason in e["reason"] for e in errors), errors
    with ctx.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar() == 0


def test_migration_0007_on_a_database_at_0006(sql_url):
    """A deployment at 0006 with predictions and events gets the nullable columns (its rows
    keep null there); downgrading removes them again."""
    from alembic import command

    from shared.db import migrate
    from shared.db.engine import engine_for_url

    engine = engine_for_url(sql_url)
    migrate.upgrade(engine, "0006")
    columns = {c["name"] for c in sa.inspect(engine).get_columns("predictions")}
    assert "explanation" not in columns
    migrate.upgrade(engine, "0007")
    inspector = sa.inspect(engine)
    added = {c["name"]: c for c in inspector.get_columns("predictions")}
    assert {"expected_low", "expected_high", "explanation"} <= set(added)
    assert all(added[n]["nullable"] for n in ("expected_low", "expected_high", "explanation"))
    events = {c["name"]: c for c in inspector.get_columns("anomaly_events")}
    assert events["explanation"]["nullable"]
    command.downgrade(migrate.alembic_config(engine), "0006")
    assert "explanation" not in {c["name"] for c in sa.inspect(engine).get_columns("predictions")}
    engine.dispose()


def test_migration_0007_for_sql_server():
    from shared.db import migrate

    script = migrate.offline_sql("mssql+pyodbc://", "0006:0007")
    assert "ALTER TABLE predictions ADD expected_low FLOAT NULL" in script
    assert "ALTER TABLE predictions ADD expected_high FLOAT NULL" in script
    assert "ALTER TABLE predictions ADD explanation VARCHAR(max) NULL" in script
    assert "ALTER TABLE anomaly_events ADD explanation VARCHAR(max) NULL" in script
