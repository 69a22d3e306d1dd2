"""Retention (issue 12): old readings, bucket aggregates, predictions and anomaly events are
deleted in bounded batches by the scoring timer; recent ones and the run history stay; and
``GET /api/anomalies`` without a device or run filter reads the index on ``start``.

Readings go through the ingestion store (which keeps the bucket aggregates). Runs are created by
the run records module; their chunk, prediction and event rows are inserted directly, as
recording would leave them: retention reads only those rows.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, insert, select, text

from shared.db.schema import (
    alert_outbox,
    anomaly_events,
    bucket_aggregates,
    predictions,
    readings,
    run_chunks,
    runs,
)
from shared.ingestion.store import insert_readings
from shared.ingestion.validation import Reading
from shared.retention import purge
from shared.runs import records
from shared.runs.service import scheduled_tick
from shared.runs.windows import Window
from shared.settings import Settings, SettingsError

NOW = datetime(2026, 5, 1, 12)
OLD = NOW - timedelta(days=40)  # beyond readings (30 d), within predictions (90 d)
ANCIENT = NOW - timedelta(days=100)  # beyond both
RECENT = NOW - timedelta(days=2)


def _count(engine, table, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar()


def _readings(start: datetime, minutes: int, sensors: int) -> list[Reading]:
    return [
        Reading(start + timedelta(minutes=m), "dev-1", f"s{s:02d}", float(m + s))
        for m in range(minutes)
        for s in range(sensors)
    ]


def _run_with_predictions(ctx, start: datetime, chunks: int = 2) -> str:
    run, _ = records.create_run(
        ctx.engine, Window(start, start + timedelta(hours=1)), "cli", "local", records.RunFilters()
    )
    with ctx.engine.begin() as conn:
        for c in range(chunks):
            chunk_id = f"c{c:05d}"
            conn.execute(
                insert(run_chunks),
                [
                    {
                        "run_id": run.run_id,
                        "chunk_id": chunk_id,
                        "blob_path": f"runs/{run.run_id}/{chunk_id}.parquet",
                        "n_sensors": 1,
                        "n_rows": 3,
                        "status": records.CHUNK_WRITTEN,
                        "n_predictions": 3,
                        "n_anomalies": 0,
                        "n_errors": 0,
                    }
                ],
            )
            conn.execute(
                insert(predictions),
                [
                    {
                        "run_id": run.run_id,
                        "chunk_id": chunk_id,
                        "device": "dev-1",
                        "sensor": f"s{c:02d}",
                        "bucket_start": start + timedelta(minutes=m),
                        "count": 12,
                        "mean": 1.0,
                        "min": 0.0,
                        "max": 2.0,
                        "std": 0.5,
                        "score": 0.1,
                        "is_anomaly": False,
                        "model_version": 1,
                    }
                    for m in range(3)
                ],
            )
    return run.run_id


def _event(conn, n: int, start: datetime, end: datetime) -> None:
    conn.execute(
        insert(anomaly_events),
        [
            {
                "event_id": f"ev-{n:06d}",
                "device": f"dev-{n % 97}",
                "sensor": f"s{n:06d}",
                "start": start,
                "end": end,
                "last_bucket_start": end - timedelta(minutes=1),
                "n_buckets": 1,
                "onset_score": 0.9,
                "peak_score": 0.9,
                "peak_bucket": start,
                "status": "closed",
                "first_run_id": "r",
                "last_run_id": "r",
                "created_at": start,
                "updated_at": end,
            }
        ],
    )


def _notification(conn, event_n: int, state: str, created_at: datetime) -> None:
    conn.execute(
        insert(alert_outbox),
        [
            {
                "notification_id": f"n-{event_n}-{state}",
                "event_id": f"ev-{event_n:06d}",
                "state": state,
                "seq": 0 if state == "opened" else 2,
                "target": "eventgrid",
                "device": f"dev-{event_n % 97}",
                "sensor": f"s{event_n:06d}",
                "run_id": "r",
                "severity": "warning",
                "payload": "{}",
                "status": "sent",
                "attempts": 1,
                "next_attempt_at": created_at,
                "created_at": created_at,
                "sent_at": created_at,
            }
        ],
    )


def test_purge_deletes_what_retention_no_longer_keeps_in_bounded_batches(ctx):
    insert_readings(ctx.engine, _readings(OLD, 10, 5))  # 50 old readings, 10 buckets x 5
    insert_readings(ctx.engine, _readings(RECENT, 10, 5))
    old_run = _run_with_predictions(ctx, ANCIENT)
    recent_run = _run_with_predictions(ctx, OLD)
    with ctx.engine.begin() as conn:
        _event(conn, 1, ANCIENT, ANCIENT + timedelta(minutes=5))  # ended long ago: deleted
        _event(conn, 2, ANCIENT, NOW - timedelta(days=1))  # began long ago, still going: kept
        _event(conn, 3, RECENT, RECENT + timedelta(minutes=5))
        for state in ("opened", "closed"):
            _notification(conn, 1, state, ANCIENT)  # its event goes: they go
            _notification(conn, 2, state, ANCIENT)  # its event stays: its keys stay
            _notification(conn, 3, state, RECENT)
        _notification(conn, 4, "opened", RECENT)  # event gone (re-run) but recent: kept

    # A budget already spent starts no batch, and says the work is not complete.
    spent = purge(ctx.engine, NOW, 30, 90, batch_rows=7, budget_seconds=-1)
    assert not spent.complete and spent.readings == 0
    assert _count(ctx.engine, readings) == 100

    purged = purge(ctx.engine, NOW, 30, 90, batch_rows=7)
    assert purged.complete
    assert purged.readings == 50 and _count(ctx.engine, readings) == 50
    assert _count(ctx.engine, readings, readings.c.ts < NOW - timedelta(days=30)) == 0
    assert purged.bucket_aggregates == 50
    assert _count(ctx.engine, bucket_aggregates, bucket_aggregates.c.bucket_start < RECENT) == 0
    assert _count(ctx.engine, bucket_aggregates) == 50
    assert purged.runs == 1 and purged.predictions == 6
    assert _count(ctx.engine, predictions, predictions.c.run_id == old_run) == 0
    assert _count(ctx.engine, run_chunks, run_chunks.c.run_id == old_run) == 0
    assert _count(ctx.engine, predictions, predictions.c.run_id == recent_run) == 6
    assert _count(ctx.engine, runs) == 2  # run history stays
    with ctx.engine.connect() as conn:
        kept = sorted(r for (r,) in conn.execute(select(anomaly_events.c.event_id)))
    assert kept == ["ev-000002", "ev-000003"] and purged.anomaly_events == 1
    with ctx.engine.connect() as conn:
        notified = sorted(r for (r,) in conn.execute(select(alert_outbox.c.notification_id)))
    assert purged.alert_outbox == 2
    assert notified == ["n-2-closed", "n-2-opened", "n-3-closed", "n-3-opened", "n-4-opened"]

    again = purge(ctx.engine, NOW, 30, 90, batch_rows=7)
    assert again.complete and again.as_dict() == {
        "readings": 0,
        "bucket_aggregates": 0,
        "predictions": 0,
        "runs": 0,
        "anomaly_events": 0,
        "alert_outbox": 0,
        "complete": True,
    }


def test_more_rows_at_one_instant_than_a_batch_still_progress(ctx):
    insert_readings(ctx.engine, _readings(OLD, 2, 10))  # 10 sensors share each timestamp
    purged = purge(ctx.engine, NOW, 30, 90, batch_rows=3)
    assert purged.complete and purged.readings == 20 and _count(ctx.engine, readings) == 0


def test_the_scoring_timer_purges(ctx):
    insert_readings(ctx.engine, _readings(OLD, 3, 2))
    insert_readings(ctx.engine, _readings(NOW - timedelta(hours=1), 3, 2))
    scheduled_tick(ctx, now=NOW)
    assert _count(ctx.engine, readings, readings.c.ts < NOW - timedelta(days=30)) == 0
    assert _count(ctx.engine, readings) == 6


def test_readings_retention_must_cover_the_training_window():
    with pytest.raises(SettingsError, match="READINGS_RETENTION_DAYS"):
        Settings.from_env({"READINGS_RETENTION_DAYS": "14"})  # TRAIN_WINDOW_HOURS is 336
    settings = Settings.from_env({"READINGS_RETENTION_DAYS": "15"})
    assert (settings.readings_retention_days, settings.predictions_retention_days) == (15, 90)


def test_fleet_wide_anomaly_listing_reads_the_start_index(ctx):
    from shared.events import EventFilters
    from shared.events.queries import _query

    with ctx.engine.begin() as conn:
        for n in range(5000):
            start = ANCIENT + timedelta(minutes=n)
            _event(conn, 10 + n, start, start + timedelta(minutes=3))
    query = _query(EventFilters()).order_by(
        anomaly_events.c.start.desc(), anomaly_events.c.device, anomaly_events.c.sensor
    )
    sql = str(query.limit(100).compile(ctx.engine, compile_kwargs={"literal_binds": True}))
    with ctx.engine.connect() as conn:
        if ctx.engine.dialect.name == "sqlite":
            conn.execute(text("ANALYZE"))
            plan = " ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
            assert "USING INDEX ix_anomaly_events_start" in plan, plan
            # Walks the index newest first and stops at the limit (ties sorted in a small
            # temp tree); never a scan of the table or a sort of all of it.
            assert not re.search(r"SCAN anomaly_events(?! USING INDEX)", plan), plan
            assert "TEMP B-TREE FOR ORDER BY" not in plan, plan
        else:
            conn.execute(text("ANALYZE anomaly_events"))
            plan = " ".join(r[0] for r in conn.execute(text(f"EXPLAIN {sql}")))
            assert "ix_anomaly_events_start" in plan and "Seq Scan" not in plan, plan
