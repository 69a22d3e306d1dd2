"""The scheduled run end to end on SQLite + Azurite and PostgreSQL + Azurite: aggregate in SQL,
chunks in blob, local executor, predictions recorded through the blob-trigger function.

The Functions host cannot run here: trigger functions are invoked with the ``azure.functions``
objects the host would build (``shared.local.host`` plays the host, as in the demo).
"""

import io
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from shared.blobs import predictions_blob
from shared.db.schema import models, predictions, run_chunks, runs
from shared.local.host import deliver_events, deliver_predictions, fire_timer, user_function
from shared.runs import records
from shared.runs.reconcile import reconcile_runs
from shared.runs.service import scheduled_tick, start_run
from shared.runs.windows import Window
from tests import scenario


def flagged(ctx, run_id) -> set:
    with ctx.engine.connect() as conn:
        return set(
            conn.execute(
                sa.select(
                    predictions.c.device, predictions.c.sensor, predictions.c.bucket_start
                ).where(predictions.c.run_id == run_id, predictions.c.is_anomaly == sa.true())
            ).all()
        )


def count_predictions(ctx, run_id=None) -> int:
    query = sa.select(sa.func.count()).select_from(predictions)
    if run_id:
        query = query.where(predictions.c.run_id == run_id)
    with ctx.engine.connect() as conn:
        return conn.execute(query).scalar_one()


def test_full_run_finds_injected_anomalies(ctx):
    sc = scenario.build(ctx)
    run = scheduled_tick(ctx, now=sc.window.end + timedelta(seconds=30))[0]
    assert run.window == sc.window and run.trigger == "timer"
    assert run.status == records.SCORING and run.job_id == f"local:{run.run_id}"
    delivered = deliver_predictions(ctx, run.run_id)
    assert delivered == [predictions_blob(run.run_id, "c00000")]
    run = records.get_run(ctx.engine, run.run_id)
    assert run.status == records.COMPLETED, run.error
    assert (run.n_sensors, run.n_chunks, run.n_chunks_recorded) == (12, 1, 1)
    assert run.n_predictions == 12 * 60 == count_predictions(ctx, run.run_id)
    truth = sc.truth()
    assert truth, "the scenario injects anomalies"
    hits = flagged(ctx, run.run_id) & truth
    assert len(hits) / len(truth) >= 0.8
    found = {(d, s) for d, s, _ in hits}
    assert found == {(a.device, a.sensor) for a in sc.fleet.anomalies}
    assert {"aggregate", "write_chunks", "score"} <= set(run.timings)


def test_timer_fired_twice_gives_one_run(ctx):
    """The timer user function, fired twice in the same period, creates one run (with no
    readings in the window it fails, with that reason)."""
    fire_timer()
    fire_timer()
    with ctx.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar_one() == 1
    (only,) = records.list_runs(ctx.engine)
    assert only.status == records.FAILED and "no readings" in only.error


def test_same_window_twice_and_catch_up(ctx):
    now = datetime(2026, 3, 2, 12, 0, 5)
    first = scheduled_tick(ctx, now)
    assert [r.window for r in first] == [Window(datetime(2026, 3, 2, 11), datetime(2026, 3, 2, 12))]
    assert scheduled_tick(ctx, now) == []
    # Five hours later with CATCHUP_MAX_WINDOWS=3: the three newest missed windows, oldest first.
    caught_up = scheduled_tick(ctx, now + timedelta(hours=5))
    assert [r.window.end.hour for r in caught_up] == [15, 16, 17]


def test_predictions_delivered_twice_change_nothing(ctx):
    sc = scenario.build(ctx, devices=2, sensors=3)
    run, created = start_run(ctx, sc.window, "cli")
    assert created
    deliver_predictions(ctx, run.run_id)
    before = records.get_run(ctx.engine, run.run_id)
    n = count_predictions(ctx)
    deliver_predictions(ctx, run.run_id)  # the host may deliver an event twice
    # Without an ETag (a host that passes none) the chunk is rewritten, still not duplicated.
    record = user_function("record_predictions")
    import azure.functions as func

    name = predictions_blob(run.run_id, "c00000")
    data = ctx.store.download(ctx.settings.predictions_container, name)
    record(func.blob.InputStream(data=data, name=f"{ctx.settings.predictions_container}/{name}"))
    after = records.get_run(ctx.engine, run.run_id)
    assert count_predictions(ctx) == n == before.n_predictions == after.n_predictions
    assert after.status == before.status == records.COMPLETED
    again, created = start_run(ctx, sc.window, "cli")
    assert not created and again.run_id == run.run_id


def test_failed_chunk_and_broken_model_make_the_run_partial(ctx):
    """Three chunks: one gets a malformed predictions file (failed chunk, with its reason); one
    sensor's model points at a model set that is not there (that sensor fails, no other)."""
    settings = ctx.settings
    sc = scenario.build(ctx, devices=3, sensors=2)
    ctx.settings = type(settings)(**{**settings.__dict__, "sensors_per_chunk": 2})
    with ctx.engine.begin() as conn:
        conn.execute(
            sa.update(models)
            .where(models.c.device == "device-003", models.c.sensor == "sensor-02")
            .values(blob_path="sets/missing-set.npz")
        )
    run, _ = start_run(ctx, sc.window, "cli")
    assert run.n_chunks == 3
    bad = predictions_blob(run.run_id, "c00001")
    ctx.store.upload(settings.predictions_container, bad, b"this is not parquet")
    deliver_predictions(ctx, run.run_id)
    run = records.get_run(ctx.engine, run.run_id)
    assert run.status == records.PARTIAL
    assert (run.n_chunks_recorded, run.n_chunks_failed, run.n_sensor_errors) == (2, 1, 1)
    errors = records.run_errors_of(ctx.engine, run.run_id)
    chunk_error = [e for e in errors if e["kind"] == "chunk_error"]
    assert chunk_error[0]["chunk_id"] == "c00001"
    assert "unreadable predictions file" in chunk_error[0]["reason"]
    sensor_error = [e for e in errors if e["kind"] == "sensor_error"]
    assert [(e["device"], e["sensor"]) for e in sensor_error] == [("device-003", "sensor-02")]
    assert "missing-set.npz" in sensor_error[0]["reason"]
    # The other sensor of the broken model's chunk still has its predictions.
    with ctx.engine.connect() as conn:
        scored = set(
            conn.execute(
                sa.select(predictions.c.device, predictions.c.sensor)
                .where(predictions.c.run_id == run.run_id)
                .distinct()
            ).all()
        )
    assert ("device-003", "sensor-01") in scored and ("device-003", "sensor-02") not in scored


def test_sensor_without_model_is_listed(ctx):
    sc = scenario.build(ctx, devices=2, sensors=2)
    extra = [
        {
            "device": "device-009",
            "sensor": "sensor-01",
            "ts": (sc.window.start + timedelta(seconds=5 * i)).isoformat() + "Z",
            "value": 1.0,
        }
        for i in range(100)
    ]
    import json

    list(deliver_events([json.dumps(extra).encode()], first_sequence=10_000))
    run, _ = start_run(ctx, sc.window, "cli")
    deliver_predictions(ctx, run.run_id)
    run = records.get_run(ctx.engine, run.run_id)
    assert run.n_sensors == 4 and run.n_sensors_without_model == 1
    no_model = [e for e in records.run_errors_of(ctx.engine, run.run_id) if e["kind"] == "no_model"]
    assert [(e["device"], e["sensor"]) for e in no_model] == [("device-009", "sensor-01")]
    assert run.status == records.COMPLETED


def test_foreign_and_unknown_files_do_not_crash(ctx):
    import azure.functions as func

    record = user_function("record_predictions")
    container = ctx.settings.predictions_container
    record(func.blob.InputStream(data=b"x", name=f"{container}/runs/notes.txt"))
    record(
        func.blob.InputStream(data=b"x", name=f"{container}/runs/run-x/c00000.predictions.parquet")
    )


def test_stalled_run_is_failed_by_the_reconciler(ctx):
    sc = scenario.build(ctx, devices=1, sensors=2)
    run, _ = start_run(ctx, sc.window, "cli")  # scored, but nothing delivered to the trigger
    assert run.status == records.SCORING
    timeout = timedelta(minutes=ctx.settings.run_timeout_minutes)
    assert reconcile_runs(ctx, now=run.updated_at + timeout / 2) == []
    (changed,) = reconcile_runs(ctx, now=run.updated_at + timeout * 2)
    assert changed.status == records.FAILED and changed.error.startswith("stalled")
    with ctx.engine.connect() as conn:
        states = {s for (s,) in conn.execute(sa.select(run_chunks.c.status))}
    assert states == {records.CHUNK_FAILED}


def test_chunk_files_follow_the_contract(ctx):
    """A chunk holds each sensor's window buckets after its CONTEXT_BUCKETS of history (marked
    ``context``, never scored into predictions), and the sensitivity in its metadata."""
    from scoring.features import CHUNK_COLUMNS, CONTEXT_BUCKETS, CONTEXT_COLUMN

    sc = scenario.build(ctx, devices=1, sensors=3)
    run, _ = start_run(ctx, sc.window, "cli")
    (name,) = ctx.store.list(ctx.settings.chunks_container, f"runs/{run.run_id}/")
    table = pq.read_table(io.BytesIO(ctx.store.download(ctx.settings.chunks_container, name)))
    assert tuple(table.column_names) == (*CHUNK_COLUMNS, CONTEXT_COLUMN)
    assert table.schema.field("bucket_start").type == pa.timestamp("us", tz="UTC")
    assert table.schema.metadata[b"scoring.sensitivity"] == b"0.5"
    assert table.num_rows == 3 * (CONTEXT_BUCKETS + 60)
    context = table.column(CONTEXT_COLUMN).to_numpy(zero_copy_only=False)
    starts = table.column("bucket_start").to_pylist()
    window_start = sc.window.start.replace(tzinfo=starts[0].tzinfo)
    assert context.sum() == 3 * CONTEXT_BUCKETS
    assert all((start < window_start) == flag for start, flag in zip(starts, context, strict=True))
    counts = table.column("count").to_pylist()
    assert set(counts) == {12}  # 5-second readings in 1-minute buckets


def test_unreadable_chunk_fails_that_chunk_through_the_blob_trigger(ctx):
    """A chunk blob the scoring step cannot read (corrupted between preparation and scoring):
    the step writes an empty predictions file with the reason; recording fails that chunk."""
    from shared.executors import make_executor
    from shared.executors.base import ChunkRef, ScoringJob
    from shared.runs.prepare import prepare_run

    sc = scenario.build(ctx, devices=2, sensors=2)
    settings = ctx.settings
    ctx.settings = type(settings)(**{**settings.__dict__, "sensors_per_chunk": 2})
    run, _ = records.create_run(ctx.engine, sc.window, "cli", "local", records.RunFilters())
    prepared = prepare_run(ctx, run)
    with ctx.engine.begin() as conn:
        records.update_run(conn, run.run_id, n_chunks=len(prepared.chunks), status="scoring")
    ctx.store.upload(settings.chunks_container, prepared.chunks[1].blob, b"corrupted")
    job = ScoringJob(
        run.run_id,
        str(sc.window),
        tuple(prepared.chunks),
        settings.chunks_container,
        settings.models_container,
        settings.predictions_container,
    )
    assert make_executor(ctx.settings).submit(job).state == "completed"
    deliver_predictions(ctx, run.run_id)
    run = records.get_run(ctx.engine, run.run_id)
    assert run.status == records.PARTIAL
    assert (run.n_chunks_recorded, run.n_chunks_failed) == (1, 1)
    (err,) = [
        e for e in records.run_errors_of(ctx.engine, run.run_id) if e["kind"] == "chunk_error"
    ]
    assert err["chunk_id"] == "c00001" and "could not be read" in err["reason"]
    assert isinstance(prepared.chunks[0], ChunkRef)


def test_concurrent_recordings_of_a_runs_chunks_count_each_other(ctx):
    """The host records several predictions files at once (host.json's blob parallelism; the
    local host does too, except on SQLite). Two chunks of one run recorded in overlapping
    transactions: the second's recount must wait for the first's commit and count it, or the
    run would stay in ``scoring`` with every chunk recorded. Chunk rows are marked recorded
    by hand here, as recording's transaction does before it recounts."""
    import threading
    import time

    if ctx.engine.dialect.name == "sqlite":
        pytest.skip("SQLite takes one writer at a time: the two cannot overlap")
    settings = ctx.settings
    sc = scenario.build(ctx, devices=2, sensors=2)
    ctx.settings = type(settings)(**{**settings.__dict__, "sensors_per_chunk": 2})
    run, _ = start_run(ctx, sc.window, "cli")
    assert run.n_chunks == 2 and run.status == records.SCORING

    def mark_recorded(conn, chunk_id):
        conn.execute(
            sa.update(run_chunks)
            .where(run_chunks.c.run_id == run.run_id, run_chunks.c.chunk_id == chunk_id)
            .values(status=records.CHUNK_RECORDED, n_predictions=1)
        )

    first = ctx.engine.connect()
    first_tx = first.begin()
    mark_recorded(first, "c00000")
    records.refresh_counts(first, run.run_id)  # holds the run's row until it commits

    def second():
        with ctx.engine.begin() as conn:
            mark_recorded(conn, "c00001")
            records.refresh_counts(conn, run.run_id)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.5)  # the second transaction reaches its recount meanwhile
    first_tx.commit()
    first.close()
    thread.join(30)
    assert not thread.is_alive()
    run = records.get_run(ctx.engine, run.run_id)
    assert (run.n_chunks_recorded, run.status) == (2, records.COMPLETED)
