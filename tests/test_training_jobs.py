"""Training on the executors (shared.training), on SQLite + Azurite and PostgreSQL + Azurite: a
fleet trained through the local executor end to end, a failing sensor, a redelivered or
rewritten summary, a re-run after a crash, and a stalled job.

Readings go in through the Event Hubs function (``shared.local.host`` plays the Functions host);
training chunks, model sets and summaries go through Azurite; nothing is mocked. (The Azure ML
executor's training job is tested in tests/test_azureml.py, with only the service faked.)
"""

from __future__ import annotations

import io
import json
from datetime import timedelta
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from scoring.model_sets import load_model_set
from shared.blobs import (
    model_set_blob,
    training_chunk_blob,
    training_job_report_blob,
    training_summary_blob,
)
from shared.clock import utcnow
from shared.db.schema import models
from shared.executors import TrainingJob
from shared.executors.local import LocalExecutor
from shared.models.registry import next_versions
from shared.models.training import estimator_features
from shared.runs.windows import Window
from shared.training import jobs
from shared.training.prepare import write_training_chunks
from shared.training.registration import DUPLICATE, KEPT_FAILED, register_chunk
from shared.training.service import collect_training, retrain_due, training_window
from tests.test_retraining import HOUR, T0, active, ingest, run_window, versions


@pytest.fixture
def env(env):
    """Hourly retraining over a 4-hour trailing window (the defaults are daily over 14 days)."""
    return {**env, "TRAIN_WINDOW_HOURS": "4", "TRAINING_SCHEDULE": "0 0 * * * *"}


def model_rows(ctx) -> list[tuple]:
    with ctx.engine.connect() as conn:
        return sorted(
            conn.execute(
                sa.select(models.c.device, models.c.sensor, models.c.version, models.c.set_id)
            ).all()
        )


def test_fleet_trained_on_the_local_pool_end_to_end(ctx):
    """Chunks in the chunks container, two pool workers fit them, model sets and summaries land
    in the models container, completion registers and activates, and the next scoring run
    scores with the new models."""
    ctx.settings = type(ctx.settings)(**{**ctx.settings.__dict__, "sensors_per_chunk": 2})
    ids = ingest(hours=5)
    now = T0 + 4 * HOUR
    report = retrain_due(ctx, now, workers=2)
    assert (report.due_first, report.chunks, report.job_status) == (6, 3, jobs.COMPLETED)
    assert sorted(report.activated) == [(d, s, 1) for d, s in sorted(ids)]
    assert active(ctx) == {k: 1 for k in ids}

    job = jobs.get_job(ctx.engine, report.job_id)
    assert job.backend_job_id == f"local:{job.job_id}" and job.finished_at is not None
    assert job.window == training_window(ctx, now)
    settings = ctx.settings
    for chunk_id in ("c00000", "c00001", "c00002"):
        assert ctx.store.exists(
            settings.chunks_container, training_chunk_blob(job.job_id, chunk_id)
        )
        summary = json.loads(
            ctx.store.download(
                settings.models_container, training_summary_blob(job.job_id, chunk_id)
            )
        )
        assert (summary["chunk_id"], summary["job_id"], summary["failed"]) == (
            chunk_id,
            job.job_id,
            [],
        )
        assert len(summary["models"]) == 2 and summary["format"] == "baseline-npz"
        data = ctx.store.download(settings.models_container, model_set_blob(summary["set_file"]))
        path = ctx.settings.data_dir / summary["set_file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        assert len(load_model_set(path).keys) == 2
    # One model set per chunk, registered under its chunk's set id.
    assert {r[3] for r in model_rows(ctx)} == {
        f"set-{job.window.end:%Y%m%dT%H%M}-{job.training_key[:8]}-a1-c0000{i}" for i in range(3)
    }
    stored = json.loads(
        ctx.store.download(settings.reports_container, training_job_report_blob(job.job_id))
    )
    assert stored["job"]["status"] == "completed"
    assert [c["activated"] for c in stored["chunks"]] == [2, 2, 2]

    run = run_window(ctx, Window(now, now + HOUR))
    assert run.n_sensors == 6 and run.n_sensor_errors == 0


def test_a_failing_sensor_fails_alone_and_only_it_is_trained_again(ctx):
    """MIN_TRAINING_BUCKETS=5 lets a sensor with 6 buckets into a chunk, where the step's fit
    refuses it (the default detector needs 10): that sensor is listed with the step's reason,
    the chunk's other sensors are registered. A second call at the same time trains only it,
    as a second attempt of the same training key."""
    ctx.settings = type(ctx.settings)(**{**ctx.settings.__dict__, "min_training_buckets": 5})

    def keep(index, ts):
        return index != 0 or T0 + 3 * HOUR <= ts < T0 + 3 * HOUR + timedelta(minutes=6)

    ids = ingest(hours=4, keep=keep)
    broken = ids[0]
    now = T0 + 4 * HOUR
    report = retrain_due(ctx, now, workers=1)
    assert report.job_status == jobs.COMPLETED and report.chunks == 1
    assert sorted(report.activated) == [(d, s, 1) for d, s in sorted(ids) if (d, s) != broken]
    [kept] = report.kept
    assert (kept.device, kept.sensor, kept.kind, kept.active_version) == (
        *broken,
        KEPT_FAILED,
        None,
    )
    assert "usable training buckets" in kept.reason
    assert broken not in active(ctx)

    again = retrain_due(ctx, now, workers=1)
    assert (again.due_first, again.due_stale) == (1, 0)
    assert again.job_id.endswith("-2") and again.job_id != report.job_id
    assert [(k.device, k.sensor, k.kind) for k in again.kept] == [(*broken, KEPT_FAILED)]
    assert again.activated == []
    assert versions(ctx) == {k: [1] for k in ids if k != broken}


def test_redelivered_and_rewritten_summaries_register_nothing_twice(ctx):
    """A summary read by two callers at once (the second holds the chunk as it was before the
    first registered it), and a step re-run that rewrites the chunk's model set and summary
    after registration: neither registers a model twice or changes the job's counts."""
    ids = ingest(hours=4)
    report = retrain_due(ctx, T0 + 4 * HOUR, workers=1)
    job = jobs.get_job(ctx.engine, report.job_id)
    before = model_rows(ctx)
    [row] = jobs.chunk_rows(ctx.engine, job.job_id)
    assert row.status == jobs.CHUNK_REGISTERED
    stale = SimpleNamespace(**{**row._mapping, "status": jobs.CHUNK_WRITTEN})
    outcome = register_chunk(ctx, job, stale)
    assert outcome.outcome == DUPLICATE and outcome.activated == []

    # The step runs again (an executor retry): same file names, new ETags.
    settings = ctx.settings
    etag = ctx.store.etag(settings.models_container, training_summary_blob(job.job_id, "c00000"))
    training_job = TrainingJob(
        job.job_id,
        str(job.window),
        (SimpleNamespace(chunk_id="c00000", blob=row.blob_path, model_files=(), n_sensors=6),),
        settings.chunks_container,
        settings.models_container,
    )
    assert LocalExecutor(settings.storage, 1).submit_training(training_job).state == "completed"
    assert (
        ctx.store.etag(settings.models_container, training_summary_blob(job.job_id, "c00000"))
        != etag
    )
    assert collect_training(ctx) == []
    assert register_chunk(ctx, job, stale).outcome == DUPLICATE
    assert model_rows(ctx) == before and versions(ctx) == {k: [1] for k in ids}
    after = jobs.get_job(ctx.engine, job.job_id)
    assert (after.n_activated, after.n_chunks_done, after.status) == (6, 1, jobs.COMPLETED)


def start_without_completing(ctx, now, submit=True) -> jobs.Job:
    """What a timer that died after submitting (``submit``) or before leaves behind: a job,
    its chunks and (when submitted to the local pool) its summaries, nothing registered."""
    from shared.models.training import training_key
    from shared.training.service import _sensors_with_data

    settings = ctx.settings
    window = training_window(ctx, now)
    features = estimator_features("baseline")
    key = training_key(
        window.start,
        window.end,
        "baseline",
        features,
        settings.bucket_seconds,
        settings.target_false_alarm_rate,
    )
    sensors = _sensors_with_data(ctx, window)
    job = jobs.create_job(ctx.engine, key, window, "baseline", "local")
    with ctx.engine.connect() as conn:
        numbers = next_versions(conn, sensors)
    prepared = write_training_chunks(ctx, job, sensors, numbers, features)
    with ctx.engine.begin() as conn:
        jobs.update_job(conn, job.job_id, n_sensors=6, n_chunks=len(prepared.chunks))
    if submit:
        training_job = TrainingJob(
            job.job_id,
            str(window),
            tuple(prepared.chunks),
            settings.chunks_container,
            settings.models_container,
        )
        submission = LocalExecutor(settings.storage, 1).submit_training(training_job)
        with ctx.engine.begin() as conn:
            jobs.update_job(
                conn, job.job_id, status=jobs.TRAINING, backend_job_id=submission.job_id
            )
    return jobs.get_job(ctx.engine, job.job_id)


def test_a_rerun_after_the_timer_died_completes_the_job_once(ctx):
    """The timer died after the pool trained but before it registered anything: the next call
    at the same time registers the job's models first, then finds nothing due."""
    ids = ingest(hours=4)
    now = T0 + 4 * HOUR
    job = start_without_completing(ctx, now)
    assert active(ctx) == {}
    report = retrain_due(ctx, now, workers=1)
    assert report.due == 0 and report.job_id is None
    assert active(ctx) == {k: 1 for k in ids}
    done = jobs.get_job(ctx.engine, job.job_id)
    assert (done.status, done.n_activated) == (jobs.COMPLETED, 6)
    again = retrain_due(ctx, now, workers=1)
    assert (again.due, again.activated) == (0, [])
    assert versions(ctx) == {k: [1] for k in ids}


def test_a_stalled_job_fails_and_its_sensors_are_trained_by_the_next_call(ctx):
    """A job whose chunks were written but never trained blocks no one for ever: after
    RUN_TIMEOUT_MINUTES without progress it fails with the reason and the next training runs."""
    ids = ingest(hours=5)
    now = T0 + 4 * HOUR
    stalled = start_without_completing(ctx, now, submit=False)
    blocked = retrain_due(ctx, now + timedelta(minutes=5), workers=1)
    assert blocked.waiting_for == stalled.job_id and active(ctx) == {}

    # Progress is measured on the wall clock (the job's created_at), as the runs' reconciler
    # measures it: collect as a tick would RUN_TIMEOUT_MINUTES later.
    timeout = timedelta(minutes=ctx.settings.run_timeout_minutes)
    assert collect_training(ctx, utcnow() + timeout / 2) == []
    [outcome] = collect_training(ctx, utcnow() + timeout + timedelta(minutes=1))
    assert outcome.reason.startswith("stalled")
    failed = jobs.get_job(ctx.engine, stalled.job_id)
    assert failed.status == jobs.FAILED and failed.error.startswith("stalled")
    assert [r.status for r in jobs.chunk_rows(ctx.engine, stalled.job_id)] == [jobs.CHUNK_FAILED]

    report = retrain_due(ctx, now + timedelta(minutes=5), workers=1)
    assert report.job_status == jobs.COMPLETED and report.due_first == 6
    assert active(ctx) == {k: 1 for k in ids}


def test_training_chunks_hold_the_aggregates_and_assigned_versions(ctx):
    """The chunk file is the window's per-bucket aggregates (the same rows scoring reads) with
    each sensor's assigned version, and says how to train in its metadata."""
    from shared.features import aggregate_features

    ingest(hours=4, devices=1, sensors=2)
    now = T0 + 4 * HOUR
    job = start_without_completing(ctx, now, submit=False)
    [row] = jobs.chunk_rows(ctx.engine, job.job_id)
    table = pq.read_table(
        io.BytesIO(ctx.store.download(ctx.settings.chunks_container, row.blob_path))
    )
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta["training.job_id"] == job.job_id and meta["training.estimator"] == "baseline"
    assert json.loads(meta["training.features"]) == list(estimator_features("baseline"))
    with ctx.engine.connect() as conn:
        expected = aggregate_features(conn, job.window.start, job.window.end, 60)
    assert table.drop(["model_version"]).equals(expected)
    assert set(table["model_version"].to_pylist()) == {1}


def test_a_summary_arriving_after_its_job_stalled_is_still_registered(ctx):
    """The step was only slow: its job was failed as stalled, then its summary came. The chunk
    is registered once and the job judged again (completed)."""
    from shared.training.registration import REGISTERED

    ids = ingest(hours=4)
    job = start_without_completing(ctx, T0 + 4 * HOUR, submit=False)
    timeout = timedelta(minutes=ctx.settings.run_timeout_minutes)
    collect_training(ctx, utcnow() + timeout + timedelta(minutes=1))
    assert jobs.get_job(ctx.engine, job.job_id).status == jobs.FAILED

    [row] = jobs.chunk_rows(ctx.engine, job.job_id)
    settings = ctx.settings
    late = TrainingJob(
        job.job_id,
        str(job.window),
        (SimpleNamespace(chunk_id=row.chunk_id, blob=row.blob_path, model_files=(), n_sensors=6),),
        settings.chunks_container,
        settings.models_container,
    )
    assert LocalExecutor(settings.storage, 1).submit_training(late).state == "completed"
    assert register_chunk(ctx, job, row).outcome == REGISTERED
    assert register_chunk(ctx, job, row).outcome == DUPLICATE  # the row as it was read
    done = jobs.get_job(ctx.engine, job.job_id)
    assert (done.status, done.error, done.n_activated) == (jobs.COMPLETED, None, 6)
    assert active(ctx) == {k: 1 for k in ids}
