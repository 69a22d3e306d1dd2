"""Retraining on a schedule (shared.training) on SQLite + Azurite and PostgreSQL + Azurite:
first training of new sensors, new versions over the trailing window, the fitness gate, rollback,
idempotence, and a persistent level shift that stops being flagged once the model is retrained.

Readings go in through the Event Hubs function and runs through the blob trigger, as the host
would deliver them (``shared.local.host``); the timer function is called as the host calls it.
"""

import json
import random
from datetime import datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from shared.blobs import training_report_blob
from shared.clock import utcnow
from shared.db.schema import models, predictions
from shared.features import MAX_LISTED_SENSORS, aggregate_features
from shared.ingestion.store import insert_readings
from shared.ingestion.validation import Reading
from shared.local.host import deliver_events, deliver_predictions, fire_timer
from shared.models import registry
from shared.models.training import train_models
from shared.runs import records
from shared.runs.service import start_run
from shared.runs.windows import Window
from shared.simulate import FleetSpec, make_fleet
from shared.training.service import (
    KEPT_TOO_FEW_BUCKETS,
    KEPT_UNFIT,
    retrain_due,
    training_window,
)

T0 = datetime(2026, 3, 1)
HOUR = timedelta(hours=1)


@pytest.fixture
def env(env):
    """Hourly retraining over a 4-hour trailing window, so a test needs hours of data, not
    weeks (the defaults are daily over 14 days)."""
    return {**env, "TRAIN_WINDOW_HOURS": "4", "TRAINING_SCHEDULE": "0 0 * * * *"}


def ingest(
    start=T0,
    hours=11.0,
    devices=2,
    sensors=3,
    interval=20,
    seed=5,
    shift=None,
    keep=None,
):
    """A clean fleet (no injected anomalies) through the Event Hubs function.

    ``shift=(index, from_ts, amount)`` adds ``amount`` to sensor ``index`` from ``from_ts`` on;
    ``keep(index, ts)`` drops a reading when false. Returns the fleet's sensor ids."""
    fleet = make_fleet(
        FleetSpec(
            start=start,
            end=start + timedelta(hours=hours),
            devices=devices,
            sensors_per_device=sensors,
            interval_seconds=interval,
            seed=seed,
            anomaly_share=0.0,
        )
    )
    ids = fleet.sensor_ids()

    def bodies():
        step = 360
        for first in range(0, fleet.spec.n_steps, step):
            last = min(first + step, fleet.spec.n_steps)
            values = fleet.values(first, last)
            batch = []
            for row, ts in enumerate(fleet.timestamps(first, last)):
                for index, (device, sensor) in enumerate(ids):
                    value = float(values[row, index])
                    if shift and index == shift[0] and ts >= shift[1]:
                        value += shift[2]
                    if keep and not keep(index, ts):
                        continue
                    batch.append(
                        {
                            "device": device,
                            "sensor": sensor,
                            "ts": ts.isoformat() + "Z",
                            "value": value,
                        }
                    )
            for i in range(0, len(batch), 200):
                yield json.dumps(batch[i : i + 200]).encode()

    for _ in deliver_events(bodies()):
        pass
    return ids


def versions(ctx) -> dict:
    with ctx.engine.connect() as conn:
        rows = conn.execute(sa.select(models.c.device, models.c.sensor, models.c.version)).all()
    out: dict = {}
    for d, s, v in rows:
        out.setdefault((d, s), []).append(v)
    return {k: sorted(v) for k, v in out.items()}


def active(ctx) -> dict:
    with ctx.engine.connect() as conn:
        return {k: m.version for k, m in registry.active_models_for(conn).items()}


def test_first_training_is_automatic_and_a_second_call_adds_nothing(ctx):
    ids = ingest(hours=5)
    now = T0 + 5 * HOUR + timedelta(seconds=42)
    report = retrain_due(ctx, now, workers=1)
    assert report.window == Window(T0 + HOUR, T0 + 5 * HOUR) == training_window(ctx, now)
    assert (report.sensors_with_data, report.due_first, report.due_stale) == (6, 6, 0)
    assert sorted(report.activated) == [(d, s, 1) for d, s in sorted(ids)]
    assert report.kept == []
    assert active(ctx) == {k: 1 for k in ids}
    with ctx.engine.connect() as conn:
        spans = conn.execute(sa.select(models.c.train_start, models.c.train_end).distinct()).all()
    assert spans == [(T0 + HOUR, T0 + 5 * HOUR)]
    stored = json.loads(
        ctx.store.download(ctx.settings.reports_container, training_report_blob(T0 + 5 * HOUR))
    )
    assert stored["activated"] == 6 and stored["due"] == {"first_training": 6, "retraining": 0}

    again = retrain_due(ctx, now, workers=1)
    assert (again.due, again.activated, again.job_id) == (0, [], None)
    # Later, but before the next occurrence of the (hourly) schedule: still nothing due.
    later = retrain_due(ctx, now + timedelta(minutes=15), workers=1)
    assert later.due == 0
    assert versions(ctx) == {k: [1] for k in ids}


def test_retraining_activates_new_versions_and_keeps_a_sensor_with_too_few_buckets(ctx):
    def keep(index, ts):
        # Sensor 0 goes quiet after 4 h and reports once more for 10 minutes at 9 h.
        return (
            index != 0
            or ts < T0 + 4 * HOUR
            or T0 + 9 * HOUR <= ts < T0 + 9 * HOUR + 600 * (timedelta(seconds=1))
        )

    ids = ingest(hours=10, keep=keep)
    quiet = ids[0]
    retrain_due(ctx, T0 + 4 * HOUR, workers=1)
    assert active(ctx) == {k: 1 for k in ids}

    report = retrain_due(ctx, T0 + 10 * HOUR, workers=1)
    assert report.window == Window(T0 + 6 * HOUR, T0 + 10 * HOUR)
    assert (report.due_first, report.due_stale) == (0, 6)
    assert sorted(report.activated) == [(d, s, 2) for d, s in sorted(ids) if (d, s) != quiet]
    [kept] = report.kept
    assert (kept.device, kept.sensor, kept.kind, kept.active_version) == (
        *quiet,
        KEPT_TOO_FEW_BUCKETS,
        1,
    )
    assert "10 buckets" in kept.reason
    assert active(ctx) == {k: (1 if k == quiet else 2) for k in ids}
    # History is kept: every version is listed, the active one marked.
    listed = registry.list_versions(ctx.engine, *ids[1])
    assert [(r["version"], r["active"]) for r in listed] == [(2, True), (1, False)]
    assert registry.rollback(ctx.engine, *ids[1]) == 1
    assert active(ctx)[ids[1]] == 1


def test_unfit_version_stays_inactive_and_rollback_skips_it(ctx):
    ids = ingest(hours=10)
    target = ids[2]
    retrain_due(ctx, T0 + 4 * HOUR, workers=1)
    # A version of the next training's key registered but never activated (as after a call that
    # died before its gate ran), with a calibration that is not finite.
    window = training_window(ctx, T0 + 8 * HOUR)
    train_models(ctx, window.start, window.end, sensors=[target], activate_new=False, workers=1)
    with ctx.engine.begin() as conn:
        conn.execute(
            sa.update(models)
            .where(
                models.c.device == target[0], models.c.sensor == target[1], models.c.version == 2
            )
            .values(calibration=json.dumps({"threshold": float("inf"), "n_samples": 240}))
        )

    report = retrain_due(ctx, T0 + 8 * HOUR, workers=1)
    [kept] = report.kept
    assert (kept.kind, kept.active_version, kept.new_version) == (KEPT_UNFIT, 1, 2)
    assert "not finite: threshold" in kept.reason
    assert sorted(report.activated) == [(d, s, 2) for d, s in sorted(ids) if (d, s) != target]
    assert active(ctx)[target] == 1

    retrain_due(ctx, T0 + 10 * HOUR, workers=1)
    assert active(ctx)[target] == 3 and versions(ctx)[target] == [1, 2, 3]
    # Rollback returns to the version that was active before, not to the unfit one.
    assert registry.rollback(ctx.engine, *target) == 1
    assert active(ctx)[target] == 1
    # The operator's choice stands: the same training called again does not undo it.
    again = retrain_due(ctx, T0 + 10 * HOUR, workers=1)
    assert again.activated == [] and active(ctx)[target] == 1


def flagged_share(ctx, run_id, sensor) -> float:
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            sa.select(predictions.c.is_anomaly).where(
                predictions.c.run_id == run_id,
                predictions.c.device == sensor[0],
                predictions.c.sensor == sensor[1],
            )
        ).all()
    assert rows, "the sensor was scored"
    return float(np.mean([bool(r[0]) for r in rows]))


def run_window(ctx, window):
    run, _ = start_run(ctx, window, "cli")
    deliver_predictions(ctx, run.run_id)
    run = records.get_run(ctx.engine, run.run_id)
    assert run.status == records.COMPLETED, run.error
    return run


def test_persistent_level_shift_stops_being_flagged_after_retraining(ctx):
    """Sensor 1 (range 30-40) moves up by 50 at 4 h and stays there: flagged after the shift
    while its model was trained before it; once retrained on a window after the shift, the new
    level is its normal and it is flagged no more than the sensors that never changed."""
    ids = ingest(hours=11, shift=(1, T0 + 4 * HOUR, 50.0))
    shifted, others = ids[1], ids[:1] + ids[2:]
    first = retrain_due(ctx, T0 + 4 * HOUR, workers=1)
    assert len(first.activated) == 6

    before = run_window(ctx, Window(T0 + 4 * HOUR, T0 + 5 * HOUR))
    shifted_before = flagged_share(ctx, before.run_id, shifted)
    assert shifted_before > 0.05
    for other in others:
        assert flagged_share(ctx, before.run_id, other) <= 0.05

    report = retrain_due(ctx, T0 + 10 * HOUR, workers=1)
    assert (*shifted, 2) in report.activated and report.kept == []

    after = run_window(ctx, Window(T0 + 10 * HOUR, T0 + 11 * HOUR))
    assert flagged_share(ctx, after.run_id, shifted) <= 0.05 < shifted_before
    for other in others:
        assert flagged_share(ctx, after.run_id, other) <= 0.05


def test_training_chunks_are_bounded_and_each_is_registered_once(ctx, monkeypatch):
    """A chunk holds at most CHUNK_ROWS buckets (here two sensors' 240): six sensors are three
    chunks of one job, trained in the local pool (two workers) and each registered once."""
    from shared.training import jobs, prepare

    monkeypatch.setattr(prepare, "CHUNK_ROWS", 2 * 240)
    ids = ingest(hours=4)
    report = retrain_due(ctx, T0 + 4 * HOUR, workers=2)
    assert (report.due, report.chunks, report.job_status) == (6, 3, jobs.COMPLETED)
    assert sorted(report.activated) == [(d, s, 1) for d, s in sorted(ids)]
    rows = jobs.chunk_rows(ctx.engine, report.job_id)
    assert [(r.chunk_id, r.n_sensors, r.status) for r in rows] == [
        (f"c{i:05d}", 2, jobs.CHUNK_REGISTERED) for i in range(3)
    ]
    job = jobs.get_job(ctx.engine, report.job_id)
    assert (job.n_chunks, job.n_chunks_done, job.n_activated, job.n_kept) == (3, 3, 6, 0)
    assert versions(ctx) == {k: [1] for k in ids}


def test_timer_function_trains_sensors_without_a_model(ctx):
    end = utcnow().replace(minute=0, second=0, microsecond=0)
    ids = ingest(start=end - 2 * HOUR, hours=2, devices=1, sensors=2, interval=30)
    fire_timer(function="scheduled_training")
    assert active(ctx) == {k: 1 for k in ids}
    fire_timer(past_due=True, function="scheduled_training")
    assert versions(ctx) == {k: [1] for k in ids}


def test_long_sensor_list_reads_exactly_those_sensors(ctx):
    """More than MAX_LISTED_SENSORS sensors are read as the id range they span and filtered:
    ids differing by case, '-', '_' and '.' sort differently under SQL collations than in
    Python, and none may be lost or added."""
    rng = random.Random(3)
    names = [f"{a}{sep}{i}" for a in ("dev", "Dev", "DEV") for sep in "-_." for i in range(80)]
    pairs = [(d, f"s{sep}{j}") for d in names for j, sep in enumerate("-_A")][: 3 * len(names)]
    ts = T0 + timedelta(minutes=1)
    # Through ingestion, which keeps the bucket aggregates that features read.
    insert_readings(ctx.engine, [Reading(ts, d, s, 1.0) for d, s in pairs])
    wanted = rng.sample(pairs, MAX_LISTED_SENSORS + 200)
    with ctx.engine.connect() as conn:
        table = aggregate_features(conn, T0, T0 + HOUR, 60, sensors=wanted)
    got = set(
        zip(table.column("device").to_pylist(), table.column("sensor").to_pylist(), strict=True)
    )
    assert got == set(wanted)
