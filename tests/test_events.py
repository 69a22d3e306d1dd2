"""Anomaly events on SQLite + Azurite and PostgreSQL + Azurite: flagged buckets of a sensor merge
into one event, a gap of EVENT_GAP_BUCKETS unflagged buckets splits them, an event open at the end
of one run's window continues in the next run, and redeliveries, re-runs and out-of-order
windows leave exactly the events the predictions imply.

Most tests record crafted predictions files (which buckets are flagged is the point, not the
detector) through the real blob-trigger function, as the host would deliver them; the last ones
go through a simulated fleet, the scheduled-run path and the HTTP API, CLI and report.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import azure.functions as func
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from scoring.features import PREDICTION_COLUMNS
from shared.blobs import chunk_blob, predictions_blob
from shared.db.schema import anomaly_events, predictions
from shared.events import (
    CLOSED,
    OPEN,
    AnomalyEvent,
    event_id_for,
    events_for,
    get_event,
    run_events,
    segment,
)
from shared.local.host import deliver_predictions, user_function
from shared.runs import records
from shared.runs.windows import Window

T0 = datetime(2026, 3, 2, 11, 0)
HOUR = Window(T0, T0 + timedelta(hours=1))
NEXT_HOUR = Window(HOUR.end, HOUR.end + timedelta(hours=1))
A, B = ("device-001", "sensor-01"), ("device-001", "sensor-02")


def minute(window: Window, m: int) -> datetime:
    return window.start + timedelta(minutes=m)


@pytest.fixture
def gap5(ctx):
    """EVENT_GAP_BUCKETS=5 (one-minute buckets): small enough to split inside one window."""
    ctx.settings = dataclasses.replace(ctx.settings, event_gap_buckets=5)
    return ctx


def predictions_file(window: Window, flags: dict, sensors=(A, B), chunk: bool = False) -> bytes:
    """A predictions file as the scoring step writes it: every minute of ``window`` for each
    sensor; ``flags[(device, sensor)]`` maps flagged minutes to their score (others 0.1).
    With ``chunk``, the chunk file of the same sensors and buckets instead."""
    rows = []
    for device, sensor in sensors:
        flagged = flags.get((device, sensor), {})
        for m in range(int(window.length.total_seconds() // 60)):
            score = flagged.get(m)
            rows.append(
                {
                    "device": device,
                    "sensor": sensor,
                    "bucket_start": (window.start + timedelta(minutes=m)).replace(tzinfo=UTC),
                    "score": 0.1 if score is None else score,
                    "is_anomaly": score is not None,
                }
            )
    frame = pd.DataFrame(rows)
    columns = {}
    for name in PREDICTION_COLUMNS:
        if name in frame:
            columns[name] = frame[name]
        elif name in ("count", "model_version"):
            columns[name] = pd.Series(1, index=frame.index, dtype="int64")
        else:  # aggregates: any number will do, the events read scores and flags
            columns[name] = pd.Series(1.0, index=frame.index)
    table = pa.Table.from_pandas(pd.DataFrame(columns), preserve_index=False)
    if chunk:  # the chunk file the run's preparation would have written for these rows
        table = table.drop_columns(["score", "is_anomaly"]).append_column(
            "model_file", pa.array(["set.npz"] * table.num_rows)
        )
    else:  # recording checks that a file is the chunk's own
        table = table.replace_schema_metadata({"scoring.chunk_id": "c00000"})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def record(ctx, window: Window, flags: dict, sensors=(A, B), attempt: int = 1) -> str:
    """Create a run of ``window`` with one chunk, upload its predictions file and deliver it to
    the blob trigger; returns the run id."""
    run, _ = records.create_run(
        ctx.engine, window, "cli", "local", records.RunFilters(), attempt=attempt
    )
    from shared.db.schema import run_chunks

    with ctx.engine.begin() as conn:
        conn.execute(sa.delete(run_chunks).where(run_chunks.c.run_id == run.run_id))
        conn.execute(
            sa.insert(run_chunks),
            [
                {
                    "run_id": run.run_id,
                    "chunk_id": "c00000",
                    "blob_path": f"runs/{run.run_id}/c00000.parquet",
                    "n_sensors": len(sensors),
                    "n_rows": 60 * len(sensors),
                    "status": records.CHUNK_WRITTEN,
                    "n_predictions": 0,
                    "n_anomalies": 0,
                    "n_errors": 0,
                }
            ],
        )
        records.update_run(conn, run.run_id, n_chunks=1, status=records.SCORING)
    ctx.store.upload(
        ctx.settings.chunks_container,
        chunk_blob(run.run_id, "c00000"),
        predictions_file(window, {}, sensors, chunk=True),
    )
    ctx.store.upload(
        ctx.settings.predictions_container,
        predictions_blob(run.run_id, "c00000"),
        predictions_file(window, flags, sensors),
    )
    deliver_predictions(ctx, run.run_id)
    assert records.get_run(ctx.engine, run.run_id).status == records.COMPLETED
    return run.run_id


def redeliver_without_etag(ctx, run_id: str) -> None:
    container = ctx.settings.predictions_container
    name = predictions_blob(run_id, "c00000")
    data = ctx.store.download(container, name)
    user_function("record_predictions")(
        func.blob.InputStream(data=data, name=f"{container}/{name}")
    )


def all_events(ctx) -> list[AnomalyEvent]:
    return sorted(events_for(ctx.engine), key=lambda e: (e.device, e.sensor, e.start))


def spans(events) -> list[tuple]:
    return [
        (e.device, e.sensor, e.start, e.last_bucket_start, e.n_buckets, e.status) for e in events
    ]


# ------------------------------------------------------------------ grouping, without SQL


def test_segment_merges_within_the_gap_and_splits_beyond_it():
    """Two flags d buckets apart are one event when d <= EVENT_GAP_BUCKETS (fewer unflagged
    buckets than the gap lie between them)."""
    t = [minute(HOUR, m) for m in (0, 1, 2, 7, 13, 14)]  # d = 1, 1, 5, 6, 1
    flags = pd.DataFrame(
        {
            "device": "d",
            "sensor": "s",
            "bucket_start": t,
            "score": [0.6, 0.9, 0.7, 0.9, 0.8, 0.95],
            "run_id": ["r1"] * 4 + ["r2"] * 2,
        }
    )
    shuffled = flags.sample(frac=1, random_state=3)
    (first, second) = segment(shuffled, 5, 60, {("d", "s"): minute(HOUR, 59)})
    assert (first.start, first.last_bucket_start, first.n_buckets) == (t[0], t[3], 4)
    assert first.end == t[3] + timedelta(minutes=1)
    assert (first.onset_score, first.peak_score, first.peak_bucket) == (0.6, 0.9, t[1])
    assert (first.first_run_id, first.last_run_id) == ("r1", "r1")
    assert (second.start, second.n_buckets, second.peak_bucket) == (t[4], 2, t[5])
    assert (second.first_run_id, second.last_run_id) == ("r2", "r2")
    assert first.event_id == event_id_for("d", "s", t[0]) != second.event_id
    # Latest scored bucket 11:59: 45 buckets after the last flag (>= 5): closed.
    assert first.status == second.status == CLOSED
    # Open while a flag in the next bucket would still join: 4 buckets after the last flag.
    (last,) = segment(flags.iloc[4:], 5, 60, {("d", "s"): t[5] + timedelta(minutes=4)})
    assert last.status == OPEN
    (last,) = segment(flags.iloc[4:], 5, 60, {("d", "s"): t[5] + timedelta(minutes=5)})
    assert last.status == CLOSED


def test_segment_rests_after_an_onset_then_alerts_again():
    """EVENT_REST_BUCKETS: an event spans at most R buckets from its onset (its alert); a flag
    at onset + R or later opens a new event however close it is to the previous flag, and an
    event is open only while its rest span lasts."""
    t = [minute(HOUR, m) for m in range(8)] + [minute(HOUR, 12)]  # 0..7 consecutive, then 12
    flags = pd.DataFrame(
        {
            "device": "d",
            "sensor": "s",
            "bucket_start": t,
            "score": [0.6] * len(t),
            "run_id": ["r1"] * len(t),
        }
    )
    # Gap 300 (everything would merge), rest 5: onsets at 0, 5 (0 + 5) and 12 (>= 5 + 5).
    events = segment(flags, 300, 60, {("d", "s"): t[-1]}, rest_buckets=5)
    assert [(e.start, e.n_buckets) for e in events] == [(t[0], 5), (t[5], 3), (t[8], 1)]
    # Without a rest span they are one event (the gap rule alone).
    (one,) = segment(flags, 300, 60, {("d", "s"): t[-1]})
    assert one.n_buckets == 9
    # The last event (onset 12) is open while a flag in the next bucket falls in its rest span.
    last = flags.iloc[8:]
    (open_,) = segment(last, 300, 60, {("d", "s"): minute(HOUR, 15)}, rest_buckets=5)
    assert open_.status == OPEN
    (closed,) = segment(last, 300, 60, {("d", "s"): minute(HOUR, 16)}, rest_buckets=5)
    assert closed.status == CLOSED


def test_segment_keeps_sensors_apart():
    t = minute(HOUR, 10)
    flags = pd.DataFrame(
        {
            "device": ["d", "d", "e"],
            "sensor": ["s", "u", "s"],
            "bucket_start": [t, t + timedelta(minutes=1), t + timedelta(minutes=2)],
            "score": [0.7, 0.8, 0.9],
            "run_id": "r",
        }
    )
    events = segment(flags, 300, 60, {})
    assert [(e.device, e.sensor, e.n_buckets) for e in events] == [
        ("d", "s", 1),
        ("d", "u", 1),
        ("e", "s", 1),
    ]
    assert len({e.event_id for e in events}) == 3
    assert segment(flags.iloc[:0], 300, 60, {}) == []


# ------------------------------------------------------------------ recording keeps them


def test_consecutive_flags_are_one_event_and_a_gap_splits(gap5):
    ctx = gap5
    run_id = record(
        ctx,
        HOUR,
        {
            A: {10: 0.7, 11: 0.95, 12: 0.8, 14: 0.6, 20: 0.9, 25: 0.99},
            B: {59: 0.75},
        },
    )
    a1, a2, b1 = all_events(ctx)
    assert spans([a1, a2, b1]) == [
        (*A, minute(HOUR, 10), minute(HOUR, 14), 4, CLOSED),
        (*A, minute(HOUR, 20), minute(HOUR, 25), 2, CLOSED),
        (*B, minute(HOUR, 59), minute(HOUR, 59), 1, OPEN),
    ]
    assert (a1.onset_score, a1.peak_score, a1.peak_bucket) == (0.7, 0.95, minute(HOUR, 11))
    assert a1.event_id == event_id_for(*A, minute(HOUR, 10))
    assert a1.first_run_id == a1.last_run_id == run_id
    assert b1.end == HOUR.end
    assert [e.event_id for e in run_events(ctx.engine, run_id)] == [
        a1.event_id,
        a2.event_id,
        b1.event_id,
    ]
    # One flagged bucket is in one event: the counts add up to the run's flags.
    assert sum(e.n_buckets for e in (a1, a2, b1)) == records.get_run(ctx.engine, run_id).n_anomalies


def test_an_event_open_at_the_end_of_a_window_continues_in_the_next_run(gap5):
    ctx = gap5
    first = record(ctx, HOUR, {A: {57: 0.8, 58: 0.9, 59: 0.7}})
    (open_event,) = all_events(ctx)
    assert open_event.status == OPEN and open_event.n_buckets == 3

    second = record(ctx, NEXT_HOUR, {A: {0: 0.97, 2: 0.6}, B: {30: 0.7}})
    extended, other = all_events(ctx)
    assert extended.event_id == open_event.event_id  # the same incident, the same id
    assert extended.start == minute(HOUR, 57) and extended.last_bucket_start == minute(NEXT_HOUR, 2)
    assert extended.n_buckets == 5 and extended.status == CLOSED
    assert (extended.peak_score, extended.peak_bucket) == (0.97, minute(NEXT_HOUR, 0))
    assert (extended.first_run_id, extended.last_run_id) == (first, second)
    assert extended.created_at == open_event.created_at
    assert (other.device, other.sensor, other.start) == (*B, minute(NEXT_HOUR, 30))
    # Both runs list the incident that spans them.
    assert extended.event_id in {e.event_id for e in run_events(ctx.engine, first)}
    assert extended.event_id in {e.event_id for e in run_events(ctx.engine, second)}


def test_a_gap_across_windows_opens_a_new_event_and_closes_the_old(gap5):
    ctx = gap5
    record(ctx, HOUR, {A: {58: 0.8}})
    record(ctx, NEXT_HOUR, {A: {4: 0.9}})  # d = 6 > 5
    old, new = all_events(ctx)
    assert (old.start, old.status) == (minute(HOUR, 58), CLOSED)
    assert (new.start, new.status) == (minute(NEXT_HOUR, 4), CLOSED)


def test_an_open_event_is_closed_when_a_later_window_passes_its_gap(gap5):
    """A run whose window starts long after an open event (a missed hour): the event is not
    re-read from predictions (it ended before the window minus the gap) but is closed."""
    ctx = gap5
    record(ctx, HOUR, {A: {59: 0.8}})
    (event,) = all_events(ctx)
    assert event.status == OPEN
    later = Window(HOUR.end + timedelta(hours=2), HOUR.end + timedelta(hours=3))
    record(ctx, later, {})
    (event,) = all_events(ctx)
    assert event.status == CLOSED and event.n_buckets == 1


def test_redelivery_and_re_runs_create_no_duplicates(gap5):
    ctx = gap5
    flags = {A: {10: 0.7, 11: 0.95, 30: 0.8}, B: {59: 0.75}}
    run_id = record(ctx, HOUR, flags)
    before = all_events(ctx)
    assert len(before) == 3

    deliver_predictions(ctx, run_id)  # the same event again (same ETag)
    redeliver_without_etag(ctx, run_id)  # a host that passes no ETag: recorded again
    assert all_events(ctx) == before  # not a field changed, updated_at included

    # A re-run of the same window with the same flags: the same events, now from the re-run.
    rerun = record(ctx, HOUR, flags, attempt=2)
    after = all_events(ctx)
    assert [e.event_id for e in after] == [e.event_id for e in before]
    assert [e.n_buckets for e in after] == [e.n_buckets for e in before]
    assert {e.last_run_id for e in after} == {rerun}
    with ctx.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(anomaly_events)).scalar() == 3


def test_the_newest_run_decides_whatever_the_delivery_order(gap5):
    """A re-run (say, with a retrained model) that clears the onset of an event: the event's
    onset moves (a new id, the old one is gone); recorded again, the older run changes nothing."""
    ctx = gap5
    original = record(ctx, HOUR, {A: {10: 0.7, 11: 0.95, 12: 0.8}})
    (old,) = all_events(ctx)
    rerun = record(ctx, HOUR, {A: {11: 0.9, 12: 0.85}}, attempt=2)
    (new,) = all_events(ctx)
    assert new.start == minute(HOUR, 11) and new.n_buckets == 2
    assert new.event_id != old.event_id and get_event(ctx.engine, old.event_id) is None
    assert new.first_run_id == rerun
    redeliver_without_etag(ctx, original)  # the older run's file arrives again, late
    assert all_events(ctx) == [new]
    # A re-run that flags nothing clears the sensor's events.
    record(ctx, HOUR, {}, attempt=3)
    assert all_events(ctx) == []


def test_windows_recorded_out_of_order_give_the_same_events(gap5, tmp_path):
    ctx = gap5
    flags_1 = {A: {55: 0.8, 58: 0.9}, B: {5: 0.7}}
    flags_2 = {A: {1: 0.95, 40: 0.6}, B: {57: 0.7}}
    record(ctx, NEXT_HOUR, flags_2)
    record(ctx, HOUR, flags_1)
    out_of_order = spans(all_events(ctx))
    with ctx.engine.begin() as conn:
        conn.execute(sa.delete(anomaly_events))
        conn.execute(sa.delete(predictions))
    record(ctx, HOUR, flags_1, attempt=2)
    record(ctx, NEXT_HOUR, flags_2, attempt=2)
    assert (
        spans(all_events(ctx))
        == out_of_order
        == [
            (*A, minute(HOUR, 55), minute(NEXT_HOUR, 1), 3, CLOSED),
            (*A, minute(NEXT_HOUR, 40), minute(NEXT_HOUR, 40), 1, CLOSED),
            (*B, minute(HOUR, 5), minute(HOUR, 5), 1, CLOSED),
            (*B, minute(NEXT_HOUR, 57), minute(NEXT_HOUR, 57), 1, OPEN),
        ]
    )


def test_a_long_open_event_is_re_read_from_its_onset(ctx):
    """An event that began before the window minus the gap and is still going: the next
    chunk re-reads its flags from its onset, so it stays one event with every bucket counted."""
    ctx.settings = dataclasses.replace(ctx.settings, event_gap_buckets=30)
    windows = [Window(T0 + timedelta(hours=h), T0 + timedelta(hours=h + 1)) for h in range(3)]
    for window in windows:
        record(ctx, window, {A: {m: 0.6 + m / 200 for m in range(0, 60, 20)}})
    (event,) = all_events(ctx)
    assert event.start == T0 and event.last_bucket_start == minute(windows[2], 40)
    assert event.n_buckets == 9 and event.status == OPEN
    assert event.peak_bucket == minute(windows[0], 40)


def test_flags_read_in_slices_of_whole_sensors_give_the_same_events(ctx):
    """The events step reads flags a slice of whole sensors at a time (issue 12): with one-flag
    partitions, sensors with events begun before the chunk's reach (re-read from their onset)
    and a sensor whose flags were cleared, it computes exactly the events already stored."""
    from shared.events.tracking import _flag_slices, update_events_for_chunk

    ctx.settings = dataclasses.replace(ctx.settings, event_gap_buckets=30)
    C, D = ("device-002", "sensor-01"), ("device-002", "sensor-02")
    sensors = (A, B, C, D)
    windows = [Window(T0 + timedelta(hours=h), T0 + timedelta(hours=h + 1)) for h in range(3)]
    for h, window in enumerate(windows):
        flags = {
            A: {m: 0.6 + m / 200 for m in range(0, 60, 20)},
            B: {m: 0.7 for m in range(50, 60)},
            C: {m: 0.9 for m in (5, 6, 7)} if h < 2 else {},  # cleared in the last window
            D: {m: 0.55 for m in range(0, 60, 25)},
        }
        run_id = record(ctx, window, flags, sensors)
    stored = spans(all_events(ctx))
    assert len({(d, s) for d, s, *_ in stored}) == 4
    with ctx.engine.begin() as conn:
        changes = update_events_for_chunk(conn, run_id, "c00000", 30, 60, slice_rows=1)
        assert (changes.sensors, changes.changed) == (4, 0), changes
        # The slices hold whole sensors, each once.
        chunk = (
            sa.select(predictions.c.device, predictions.c.sensor)
            .where(predictions.c.run_id == run_id)
            .distinct()
            .subquery()
        )
        slices = list(_flag_slices(conn, chunk, T0, slice_rows=2))
        keys = [sorted(set(zip(f["device"], f["sensor"], strict=True))) for f in slices]
        assert len(slices) > 1 and sorted(k for ks in keys for k in ks) == [A, B, C, D]
        conn.rollback()


def test_events_for_filters_by_sensor_and_overlap(gap5):
    ctx = gap5
    record(ctx, HOUR, {A: {10: 0.7, 30: 0.8}, B: {59: 0.75}})
    assert [e.start for e in events_for(ctx.engine, *A)] == [minute(HOUR, 10), minute(HOUR, 30)]
    # Overlap: the event of 11:10 ends at 11:11, so "since 11:10:30" still has it.
    since = minute(HOUR, 10) + timedelta(seconds=30)
    assert [e.start for e in events_for(ctx.engine, *A, since=since)] == [
        minute(HOUR, 10),
        minute(HOUR, 30),
    ]
    assert [e.start for e in events_for(ctx.engine, since=minute(HOUR, 11))] == [
        minute(HOUR, 30),
        minute(HOUR, 59),
    ]
    assert [e.start for e in events_for(ctx.engine, until=minute(HOUR, 30))] == [minute(HOUR, 10)]
    assert events_for(ctx.engine, device="device-404") == []


# ------------------------------------------------------------------ API, CLI and report


def test_api_lists_events_and_shows_one_with_its_buckets(gap5):
    from tests.test_http import BASE, call

    ctx = gap5
    run_id = record(ctx, HOUR, {A: {10: 0.7, 11: 0.95, 13: 0.8}, B: {40: 0.6, 59: 0.9}})
    status, body = call("list_anomalies", params={"run_id": run_id})
    assert status == 200
    listed = body["events"]
    # Newest onset first; one item per incident.
    assert [(e["sensor"], e["start"]) for e in listed] == [
        ("sensor-02", "2026-03-02T11:59:00Z"),
        ("sensor-02", "2026-03-02T11:40:00Z"),
        ("sensor-01", "2026-03-02T11:10:00Z"),
    ]
    incident = listed[-1]
    assert incident["n_buckets"] == 3 and incident["peak_score"] == 0.95
    assert incident["end"] == "2026-03-02T11:14:00Z" and incident["status"] == CLOSED
    assert incident["report_url"] == f"{BASE}/runs/{run_id}/report"
    assert incident["url"] == f"{BASE}/anomalies/{incident['event_id']}"

    def ids(**params):
        status, body = call("list_anomalies", params=params)
        assert status == 200, body
        return [e["event_id"] for e in body["events"]]

    assert ids(status="open") == [listed[0]["event_id"]]
    assert ids(min_score="0.9") == [listed[0]["event_id"], incident["event_id"]]
    assert ids(device="device-001", sensor="sensor-01") == [incident["event_id"]]
    assert ids(since="2026-03-02T11:30:00Z", until="2026-03-02T11:50:00") == [listed[1]["event_id"]]
    assert ids(limit="1") == [listed[0]["event_id"]]
    assert ids(run_id="run-unknown") == []

    status, detail = call(
        "get_anomaly",
        path=f"anomalies/{incident['event_id']}",
        route_params={"event_id": incident["event_id"]},
    )
    assert status == 200 and detail["event_id"] == incident["event_id"]
    # Every bucket of the span, flagged or not: 11:10 to 11:13.
    assert [(b["bucket_start"], b["is_anomaly"]) for b in detail["buckets"]] == [
        ("2026-03-02T11:10:00Z", True),
        ("2026-03-02T11:11:00Z", True),
        ("2026-03-02T11:12:00Z", False),
        ("2026-03-02T11:13:00Z", True),
    ]
    assert detail["buckets_truncated"] is False
    status, missing = call("get_anomaly", route_params={"event_id": "ev-nope"})
    assert status == 404 and "no anomaly event" in missing["error"]


def test_cli_lists_events_and_shows_one(gap5, env, monkeypatch, capsys):
    from shared import cli

    ctx = gap5
    record(ctx, HOUR, {A: {10: 0.7, 11: 0.95}, B: {59: 0.9}})
    for name, value in {**env, "EVENT_GAP_BUCKETS": "5"}.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["anomalies", "--status", "closed"]) == 0
    out = capsys.readouterr().out
    (a1,) = events_for(ctx.engine, *A)
    assert a1.event_id in out and "2026-03-02 11:10:00" in out and "0.950" in out
    assert "sensor-02" not in out  # its event is open
    assert cli.main(["anomalies", "show", a1.event_id]) == 0
    out = capsys.readouterr().out
    assert f'"event_id": "{a1.event_id}"' in out
    assert "2026-03-02T11:11:00Z  *     0.950" in out
    assert cli.main(["anomalies", "show", "ev-nope"]) == 2


def test_report_lists_the_runs_events_and_shades_their_spans(gap5):
    from shared.report import build_run_report

    ctx = gap5
    first = record(ctx, HOUR, {A: {58: 0.8, 59: 0.9}})
    second = record(ctx, NEXT_HOUR, {A: {0: 0.97, 1: 0.6, 30: 0.7}})
    continued, later = events_for(ctx.engine)
    page = build_run_report(ctx, second)
    assert "Anomaly events (2)" in page
    assert continued.event_id in page and later.event_id in page
    assert "2026-03-02 11:58 (before this window)" in page
    # One shaded span per event on the sensor's plot, the continued one clipped to the window.
    assert page.count("<rect class=event") == 2
    assert f"data-event='{continued.event_id}'" in page
    assert "Anomaly events (1)" in build_run_report(ctx, first)


def test_a_simulated_fleet_gets_one_event_per_incident(ctx):
    """The scheduled-run path on a simulated fleet with injected anomalies: every flagged bucket
    is in exactly one event of its sensor, and every sensor with flags has an event."""
    from shared.runs.service import start_run
    from tests import scenario

    sc = scenario.build(ctx, devices=2, sensors=3)
    run, _ = start_run(ctx, sc.window, "cli")
    deliver_predictions(ctx, run.run_id)
    run = records.get_run(ctx.engine, run.run_id)
    with ctx.engine.connect() as conn:
        flagged = conn.execute(
            sa.select(predictions.c.device, predictions.c.sensor, predictions.c.bucket_start).where(
                predictions.c.run_id == run.run_id, predictions.c.is_anomaly == sa.true()
            )
        ).all()
    events = run_events(ctx.engine, run.run_id)
    assert flagged and events
    assert sum(e.n_buckets for e in events) == len(flagged) == run.n_anomalies
    for device, sensor, bucket in flagged:
        holding = [
            e
            for e in events
            if (e.device, e.sensor) == (device, sensor) and e.start <= bucket < e.end
        ]
        assert len(holding) == 1
    assert len(events) < len(flagged) or all(e.n_buckets == 1 for e in events)


# ------------------------------------------------------------------ the migration


def test_migration_0003_on_a_database_at_0002(sql_url):
    """A deployment at 0002 gets the table and its indexes (the chain 0001 -> 0002 -> 0003);
    downgrading removes them again."""
    from shared.db import migrate
    from shared.db.engine import engine_for_url

    engine = engine_for_url(sql_url)
    migrate.upgrade(engine, "0002")
    assert "anomaly_events" not in sa.inspect(engine).get_table_names()
    migrate.upgrade(engine, "0003")  # later revisions (0004, 0005) have their own tests
    assert migrate.current_revision(engine) == "0003"
    inspector = sa.inspect(engine)
    indexes = {i["name"]: i for i in inspector.get_indexes("anomaly_events")}
    assert indexes["ix_anomaly_events_device_sensor_start"]["column_names"] == [
        "device",
        "sensor",
        "start",
    ]
    assert indexes["ix_anomaly_events_device_sensor_start"]["unique"]
    assert indexes["ix_anomaly_events_start"]["column_names"] == ["start"]
    # The partial index of flagged predictions that the recompute reads.
    flagged = {i["name"]: i for i in inspector.get_indexes("predictions")}["ix_predictions_flagged"]
    assert flagged["column_names"] == ["device", "sensor", "bucket_start"]
    where = flagged.get("dialect_options", {})
    assert "is_anomaly" in str(where.get("postgresql_where", where.get("sqlite_where", "")))
    from alembic import command

    command.downgrade(migrate.alembic_config(engine), "0002")
    assert "anomaly_events" not in sa.inspect(engine).get_table_names()
    engine.dispose()


def test_migration_0003_for_sql_server_uses_datetime2():
    from shared.db import migrate

    script = migrate.offline_sql("mssql+pyodbc://", "0002:0003")
    assert "CREATE TABLE anomaly_events" in script
    for column in ("start", "[end]", "last_bucket_start", "peak_bucket", "created_at"):
        assert f"{column} DATETIME2(6) NOT NULL" in script
    assert "CREATE UNIQUE INDEX ix_anomaly_events_device_sensor_start" in script
    assert (
        "CREATE INDEX ix_predictions_flagged ON predictions (device, sensor, bucket_start) "
        "WHERE is_anomaly = 1" in script
    )
