"""Recording under hostile predictions files, on SQLite + Azurite and PostgreSQL + Azurite
(issue 11, items 2, 3, 5 and 13).

Two real runs of a trained simulated fleet (two chunks each, scored by the local executor):
run A over the scored hour, recorded; run B over the hour before, scored but not yet recorded.
Each kind of hostile file (truncated, partial, wrong columns or types, another chunk's or run's
file, duplicates, foreign sensors or buckets, broken errors files...) is delivered through the
real blob-trigger function, as the host would, twice:

* under the name of A's recorded chunk: it is refused and **nothing** changes (predictions,
  chunks, runs, errors and anomaly events are compared whole);
* under the name of B's chunk not yet recorded: that chunk fails at once with the reason, no row
  of it is stored, and nothing of any other chunk or run changes.

Nothing raises for a bad file (the host would retry it five times, then park it while the run
stalls); only transient faults (storage or SQL unreachable) raise. Afterwards B's real files
still record it completely.
"""

from __future__ import annotations

import dataclasses
import io
from datetime import timedelta

import azure.functions as func
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from azure.core.exceptions import AzureError
from sqlalchemy.exc import OperationalError

from shared.blobs import BlobStore, errors_blob, predictions_blob
from shared.context import AppContext
from shared.db.engine import engine_for_url
from shared.db.schema import anomaly_events, predictions, run_chunks, run_errors, runs
from shared.local.host import deliver_predictions, user_function
from shared.runs import records
from shared.runs.recording import record_predictions_blob
from shared.runs.service import start_run
from shared.runs.windows import Window
from tests import scenario


def snapshot(ctx, skip_run: str | None = None) -> dict:
    """Everything recording may touch, as sorted tuples (rows of ``skip_run`` left out)."""

    def rows(table, order, where=None):
        query = sa.select(table).order_by(*order)
        if skip_run is not None and where is not None:
            query = query.where(where != skip_run)
        with ctx.engine.connect() as conn:
            return [tuple(repr(v) for v in r) for r in conn.execute(query)]

    p, c, r, e = predictions.c, run_chunks.c, runs.c, run_errors.c
    return {
        "predictions": rows(predictions, [p.run_id, p.device, p.sensor, p.bucket_start], p.run_id),
        "chunks": rows(run_chunks, [c.run_id, c.chunk_id], c.run_id),
        "runs": rows(runs, [r.run_id], r.run_id),
        "errors": rows(run_errors, [e.run_id, e.chunk_id, e.kind, e.device, e.sensor], e.run_id),
        "events": rows(anomaly_events, [anomaly_events.c.event_id]),
    }


def parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def with_column(table: pa.Table, name: str, array) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, array)


def meta(table: pa.Table, **values: str) -> pa.Table:
    metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    metadata.update({f"scoring.{k}": v for k, v in values.items()})
    return table.replace_schema_metadata(metadata)


def hostile_files(own: bytes, other_chunk: bytes, other_run: bytes) -> list[tuple]:
    """(kind, predictions bytes, errors-file bytes or None, a phrase of the expected reason)."""
    t = pq.read_table(io.BytesIO(own))
    n = t.num_rows
    strings = pa.array(["false"] * n)
    scores = t.column("score").to_pylist()
    bucket_text = pa.array([str(b) for b in t.column("bucket_start").to_pylist()])
    first_sensor = t.column("sensor")[0].as_py()
    long_device = pa.array(
        [
            "d" * 70 if s == first_sensor else d
            for d, s in zip(
                t.column("device").to_pylist(), t.column("sensor").to_pylist(), strict=True
            )
        ]
    )
    errors_one = parquet(
        pa.table(
            {
                "device": [t.column("device")[0].as_py()],
                "sensor": ["sensor-that-is-not-in-the-chunk"],
                "reason": ["made up"],
            }
        )
    )
    return [
        ("truncated file", own[: len(own) // 2], None, "unreadable predictions file"),
        ("empty file", b"", None, "unreadable predictions file"),
        ("not parquet", b"PAR1 this is not parquet PAR1", None, "unreadable predictions file"),
        ("half the rows", parquet(t.slice(0, n // 2)), None, "neither predicted nor listed"),
        ("no score column", parquet(t.drop_columns(["score"])), None, "lacks column(s) score"),
        (
            "no chunk id metadata",
            parquet(t.replace_schema_metadata({"scoring.errors": "0"})),
            None,
            "no scoring.chunk_id",
        ),
        ("another chunk's file", other_chunk, None, "not 'c00000'"),
        ("the other run's same chunk", other_run, None, "not buckets of this chunk"),
        (
            "is_anomaly as strings",
            parquet(with_column(t, "is_anomaly", strings)),
            None,
            "column is_anomaly is string",
        ),
        (
            "score as strings",
            parquet(with_column(t, "score", pa.array([str(s) for s in scores]))),
            None,
            "column score is string",
        ),
        (
            "null score",
            parquet(with_column(t, "score", pa.array([None] + scores[1:], pa.float64()))),
            None,
            "null value(s) in column score",
        ),
        (
            "score out of range",
            parquet(with_column(t, "score", pa.array([7.5] + scores[1:]))),
            None,
            "outside [0, 1]",
        ),
        (
            "NaN score",
            parquet(with_column(t, "score", pa.array([float("nan")] + scores[1:]))),
            None,
            "outside [0, 1]",
        ),
        ("duplicate row", parquet(pa.concat_tables([t, t.slice(0, 1)])), None, "more than once"),
        (
            "bucket_start as strings",
            parquet(with_column(t, "bucket_start", bucket_text)),
            None,
            "column bucket_start is string",
        ),
        (
            "70-character device",
            parquet(with_column(t, "device", long_device)),
            None,
            "not buckets of this chunk",
        ),
        (
            "buckets shifted by a day",
            parquet(
                with_column(
                    t,
                    "bucket_start",
                    pa.array(
                        [b + timedelta(days=1) for b in t.column("bucket_start").to_pylist()],
                        t.schema.field("bucket_start").type,
                    ),
                )
            ),
            None,
            "not buckets of this chunk",
        ),
        (
            "another model version",
            parquet(with_column(t, "model_version", pa.compute.add(t.column("model_version"), 1))),
            None,
            "not buckets of this chunk",
        ),
        (
            "count as floats",
            parquet(with_column(t, "count", t.column("count").cast(pa.float64()))),
            None,
            "column count is double",
        ),
        ("corrupt errors file", parquet(meta(t, errors="1")), b"garbage", "unreadable errors file"),
        ("errors count not a number", parquet(meta(t, errors="abc")), None, "not a count"),
        (
            "errors file naming a foreign sensor",
            parquet(meta(t, errors="1")),
            errors_one,
            "not the chunk's",
        ),
        (
            "chunk error for a scored chunk",
            parquet(meta(t, chunk_error="made up")),
            None,
            "could not score the chunk",
        ),
    ]


def deliver(ctx, run_id: str, chunk_id: str, data: bytes, errors: bytes | None) -> None:
    container = ctx.settings.predictions_container
    if errors is not None:
        ctx.store.upload(container, errors_blob(run_id, chunk_id), errors)
    name = predictions_blob(run_id, chunk_id)
    etag = ctx.store.upload(container, name, data)
    user_function("record_predictions")(
        func.blob.InputStream(data=data, name=f"{container}/{name}", blob_properties={"ETag": etag})
    )


@pytest.fixture
def two_runs(ctx):
    """Run A recorded, run B scored but not recorded; two chunks of two sensors each."""
    sc = scenario.build(ctx, devices=2, sensors=2)
    ctx.settings = dataclasses.replace(ctx.settings, sensors_per_chunk=2)
    a, _ = start_run(ctx, sc.window, "cli")
    deliver_predictions(ctx, a.run_id)
    assert records.get_run(ctx.engine, a.run_id).status == records.COMPLETED
    before = Window(sc.window.start - timedelta(hours=1), sc.window.start)
    b, _ = start_run(ctx, before, "cli")
    assert (a.n_chunks, b.n_chunks) == (2, 2) and b.status == records.SCORING

    container = ctx.settings.predictions_container
    good = {
        (r, c): ctx.store.download(container, predictions_blob(r, c))
        for r in (a.run_id, b.run_id)
        for c in ("c00000", "c00001")
    }
    return ctx, a.run_id, b.run_id, good


def test_hostile_predictions_files_never_lose_duplicate_or_corrupt_data(two_runs):
    ctx, a, b, good = two_runs
    recorded = snapshot(ctx)
    n_a = records.get_run(ctx.engine, a).n_predictions
    assert n_a == 4 * 60

    # 1. Against A's recorded chunk: refused, and nothing at all changes.
    kinds = hostile_files(good[(a, "c00000")], good[(a, "c00001")], good[(b, "c00000")])
    for kind, data, errors, _ in kinds:
        deliver(ctx, a, "c00000", data, errors)
        assert snapshot(ctx) == recorded, f"{kind}: a refused redelivery changed the database"

    # 2. Against B's chunk that is not recorded yet: it fails with the reason, and nothing of
    #    any other chunk or run changes.
    kinds = hostile_files(good[(b, "c00000")], good[(b, "c00001")], good[(a, "c00000")])
    others = snapshot(ctx, skip_run=b)
    for kind, data, errors, phrase in kinds:
        deliver(ctx, b, "c00000", data, errors)
        with ctx.engine.connect() as conn:
            chunk = conn.execute(
                sa.select(run_chunks).where(
                    run_chunks.c.run_id == b, run_chunks.c.chunk_id == "c00000"
                )
            ).one()
            stored = conn.execute(
                sa.select(sa.func.count()).where(predictions.c.run_id == b)
            ).scalar_one()
        assert chunk.status == records.CHUNK_FAILED, kind
        assert phrase in chunk.error, f"{kind}: {chunk.error}"
        assert stored == 0, f"{kind}: rows of a refused file were stored"
        reasons = [
            e["reason"]
            for e in records.run_errors_of(ctx.engine, b)
            if e["kind"] == "chunk_error" and e["chunk_id"] == "c00000"
        ]
        assert reasons == [chunk.error], kind  # one reason, replaced by the next refusal
        run_b = records.get_run(ctx.engine, b)
        assert run_b.status == records.SCORING and run_b.n_predictions == 0, kind
        assert snapshot(ctx, skip_run=b) == others, f"{kind} touched another run's rows"
    assert len(kinds) >= 18

    # 3. The real files still record B, completely, and A is as it was.
    container = ctx.settings.predictions_container
    ctx.store.upload(container, errors_blob(b, "c00000"), b"")  # leftovers are harmless
    for chunk_id in ("c00000", "c00001"):
        deliver(ctx, b, chunk_id, good[(b, chunk_id)], None)
    run_b = records.get_run(ctx.engine, b)
    assert run_b.status == records.COMPLETED, run_b.error
    with ctx.engine.connect() as conn:
        stored = conn.execute(
            sa.select(sa.func.count()).where(predictions.c.run_id == b)
        ).scalar_one()
    assert stored == run_b.n_predictions == 4 * 60
    assert snapshot(ctx, skip_run=b)["predictions"] == recorded["predictions"]


def test_a_file_for_an_unknown_chunk_changes_no_run(two_runs):
    """Issue 11, item 13: such a file used to add a ``foreign_file`` error to a finished run."""
    ctx, a, _, good = two_runs
    before = snapshot(ctx)
    deliver(ctx, a, "c00009", good[(a, "c00000")], None)
    deliver(ctx, "run-that-does-not-exist", "c00000", good[(a, "c00000")], None)
    assert snapshot(ctx) == before
    assert records.get_run(ctx.engine, a).status == records.COMPLETED


def test_a_damaged_or_missing_chunk_file_refuses_the_delivery_and_changes_nothing(two_runs):
    """The chunk file (read by ranges, its key columns only) is what a predictions file is
    checked against: unreadable or gone, no retry helps, so the delivery is refused with the
    reason; against a recorded chunk nothing changes."""
    ctx, a, _, good = two_runs
    before = snapshot(ctx)
    container = ctx.settings.chunks_container
    with ctx.engine.connect() as conn:
        path = conn.execute(
            sa.select(run_chunks.c.blob_path).where(
                run_chunks.c.run_id == a, run_chunks.c.chunk_id == "c00000"
            )
        ).scalar_one()
    original = ctx.store.download(container, path)
    table = pq.read_table(io.BytesIO(original))
    damaged = [
        (original[: len(original) // 2], "cannot be read to check the predictions"),
        (parquet(table.drop_columns(["model_version"])), "cannot be read to check"),
        (parquet(with_column(table, "bucket_start", pa.array(["x"] * len(table)))), "bucket_start"),
    ]
    name = predictions_blob(a, "c00000")
    try:
        for data, phrase in damaged:
            ctx.store.upload(container, path, data)
            result = record_predictions_blob(ctx, name, good[(a, "c00000")], None)
            assert result.outcome == "refused" and phrase in result.reason, result
            assert path in result.reason
        ctx.store.client.get_blob_client(container, path).delete_blob()
        result = record_predictions_blob(ctx, name, good[(a, "c00000")], None)
        assert result.outcome == "refused" and "not found" in result.reason, result
    finally:
        ctx.store.upload(container, path, original)
    assert snapshot(ctx) == before


def test_transient_faults_raise_for_the_hosts_retry_and_change_nothing(two_runs, tmp_path):
    """Storage or SQL unreachable is not the file's fault: recording raises (the host retries)
    and writes nothing. (Unreachable endpoints: a closed local port, a directory as SQLite
    file.)"""
    ctx, a, b, good = two_runs
    before = snapshot(ctx)
    name = predictions_blob(b, "c00000")
    dead_storage = BlobStore.from_settings(
        dataclasses.replace(
            ctx.settings,
            storage=dataclasses.replace(
                ctx.settings.storage,
                connection_string=(
                    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
                    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
                    "KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
                ),
            ),
        )
    )
    offline = AppContext(ctx.settings, ctx.engine, dead_storage)
    with pytest.raises(AzureError):
        record_predictions_blob(offline, name, good[(b, "c00000")], "etag-1")
    no_sql = AppContext(
        ctx.settings,
        engine_for_url(
            f"sqlite:///{tmp_path}"
            if ctx.engine.dialect.name == "sqlite"
            else "postgresql+psycopg://nobody@127.0.0.1:9/none"
        ),
        ctx.store,
    )
    with pytest.raises(OperationalError):
        record_predictions_blob(no_sql, name, good[(b, "c00000")], "etag-1")
    assert snapshot(ctx) == before


def test_the_report_renders_flagged_buckets_with_null_or_nan_aggregates(two_runs):
    """Issue 11, item 13: a flagged row whose mean is null made ``GET .../report`` a 500.
    Aggregates are nullable in the schema (and NaN is a float); the page must still render."""
    ctx, a, _, _ = two_runs
    flagged = sa.and_(predictions.c.run_id == a, predictions.c.is_anomaly == sa.true())
    with ctx.engine.begin() as conn:
        first = conn.execute(
            sa.select(predictions.c.device, predictions.c.sensor, predictions.c.bucket_start)
            .where(flagged)
            .order_by(predictions.c.bucket_start)
        ).first()
        assert first is not None, "the scenario flags buckets"
        conn.execute(
            sa.update(predictions)
            .where(flagged, predictions.c.bucket_start == first.bucket_start)
            .values(mean=None, min=None, max=None)
        )
        conn.execute(
            sa.update(predictions)
            .where(flagged, predictions.c.bucket_start > first.bucket_start)
            .values(mean=float("nan"))
        )
        # One sensor with no usable aggregate at all.
        conn.execute(
            sa.update(predictions)
            .where(predictions.c.device == first.device, predictions.c.sensor == first.sensor)
            .values(mean=None, min=None, max=None, std=None)
        )
    req = func.HttpRequest(
        "GET", f"http://localhost/api/runs/{a}/report", body=b"", route_params={"run_id": a}
    )
    response = user_function("run_report")(req)
    assert response.status_code == 200
    page = response.get_body().decode()
    assert "mean n/a" in page and f"{first.device}/{first.sensor}" in page
