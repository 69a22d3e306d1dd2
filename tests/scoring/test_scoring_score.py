"""The scoring step end to end: files in, predictions and errors out, failures isolated."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scoring_testdata import REPO, chunk_frame, subprocess_env, uniform_buckets, write_chunk
from sklearn.ensemble import IsolationForest
from sklearn.tree import DecisionTreeClassifier

import scoring.score as score_module
from scoring.features import DEFAULT_FEATURES, EXPLANATION_COLUMNS, PREDICTION_COLUMNS
from scoring.model_sets import SensorModel, graded_from_margin, margin_unit
from scoring.modeling import fit_sensor_model, write_model_set
from scoring.score import score_chunks

N_BUCKETS = 30


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Models of three kinds, a chunk with healthy and broken sensors, and the expectations."""
    root = tmp_path_factory.mktemp("world")
    models_dir, chunks_dir = root / "models", root / "chunks"
    models_dir.mkdir()
    chunks_dir.mkdir()
    rng = np.random.default_rng(0)

    ranges = {f"s{i}": (10.0 * i, 10.0 * i + 5) for i in range(1, 7)}
    default_models = [
        fit_sensor_model("dev-a", sensor, 3, uniform_buckets(rng, lo, hi, 240))
        for sensor, (lo, hi) in ranges.items()
    ]
    nan_model = fit_sensor_model("dev-nan", "s1", 3, uniform_buckets(rng, 10, 15, 240))
    assert write_model_set(models_dir / "run-1.npz", default_models + [nan_model]) == "ocsvm-npz"

    iso = fit_sensor_model(
        "dev-b",
        "iso",
        1,
        uniform_buckets(rng, 0, 1, 240),
        estimator=IsolationForest(n_estimators=25, random_state=0),
    )
    X_tree = uniform_buckets(rng, 0, 2, 240)
    tree = SensorModel(
        "dev-b",
        "tree",
        1,
        DEFAULT_FEATURES,
        DecisionTreeClassifier(max_depth=2, random_state=0).fit(
            X_tree, np.where(X_tree[:, 0] > 1.2, -1, 1)
        ),
        0.0,
        {},
    )
    # Fitted on 3 columns but claims 4 features: must fail that sensor with a clear reason.
    wrong_width = SensorModel(
        "dev-b",
        "wide",
        1,
        DEFAULT_FEATURES,
        IsolationForest(n_estimators=5, random_state=0).fit(uniform_buckets(rng, 0, 1, 50)[:, :3]),
        0.0,
        {},
    )
    assert write_model_set(models_dir / "run-2.skops.zip", [iso, tree, wrong_width]) == "skops"
    (models_dir / "corrupt.npz").write_bytes(b"PK\x03\x04 truncated garbage")

    data, frames = {}, []
    for sensor, (lo, hi) in ranges.items():
        X = uniform_buckets(rng, lo, hi, N_BUCKETS)
        X[-1, 3] = hi + 20  # a spike in the last bucket
        data[("dev-a", sensor)] = (X, default_models[int(sensor[1:]) - 1])
        frames.append(chunk_frame("dev-a", sensor, X, "run-1.npz", 3))
    for name, model, lo, hi in [("iso", iso, 0, 1), ("tree", tree, 0, 2)]:
        X = uniform_buckets(rng, lo, hi, N_BUCKETS)
        data[("dev-b", name)] = (X, model)
        frames.append(chunk_frame("dev-b", name, X, "run-2.skops.zip", 1))
    X_nan = uniform_buckets(rng, 10, 15, N_BUCKETS)
    X_nan[4, 1] = np.nan
    frames += [
        chunk_frame("dev-b", "wide", uniform_buckets(rng, 0, 1, N_BUCKETS), "run-2.skops.zip", 1),
        chunk_frame("dev-a", "s1", X_nan, "run-1.npz", 3).assign(device="dev-nan"),
        chunk_frame("dev-a", "s2-old", uniform_buckets(rng, 20, 25, 5), "run-1.npz", 99),
        chunk_frame("dev-c", "x", uniform_buckets(rng, 0, 1, 5), "absent.npz", 1),
        chunk_frame("dev-c", "y", uniform_buckets(rng, 0, 1, 5), "corrupt.npz", 1),
    ]
    chunk = pd.concat(frames, ignore_index=True)
    write_chunk(chunks_dir / "chunk-0001.parquet", [chunk])
    # The same rows shuffled, with a short sensor: grouping must not depend on row order.
    shuffled = chunk.sample(frac=1.0, random_state=1)
    shuffled = shuffled[~((shuffled["sensor"] == "s3") & (shuffled["bucket_start"].dt.minute < 10))]
    write_chunk(chunks_dir / "chunk-0002.parquet", [shuffled])
    expected_failures = {
        ("dev-b", "wide"): "feature count mismatch",
        ("dev-nan", "s1"): "non-finite feature values (NaN/inf) in std",
        ("dev-a", "s2-old"): "no model for version 99 in model set 'run-1.npz'",
        ("dev-c", "x"): "model set 'absent.npz' could not be loaded: FileNotFoundError",
        ("dev-c", "y"): "model set 'corrupt.npz' could not be loaded: ModelSetError",
    }
    return {
        "root": root,
        "models": models_dir,
        "chunks": chunks_dir,
        "data": data,
        "expected_failures": expected_failures,
    }


def _expected_scores(world, device, sensor, bucket_minutes=None):
    X, model = world["data"][(device, sensor)]
    if bucket_minutes is not None:
        X = X[bucket_minutes]
    return graded_from_margin(model.anomaly_score(X), margin_unit(model.calibration))


def test_scores_known_values_and_isolates_failures(world, tmp_path):
    summary = score_chunks(
        world["chunks"], world["models"], tmp_path, chunk_files=["chunk-0001.parquet"]
    )
    assert summary.chunks == 1 and summary.chunks_failed == 0
    assert summary.sensors_scored == 8
    assert summary.sensors_failed == 5
    assert summary.rows_written == 8 * N_BUCKETS

    errors = pq.read_table(tmp_path / "chunk-0001.errors.parquet").to_pandas()
    assert list(errors.columns) == ["device", "sensor", "reason"]
    got = {(d, s): r for d, s, r in errors.itertuples(index=False)}
    assert set(got) == set(world["expected_failures"])
    for key, reason in world["expected_failures"].items():
        assert reason in got[key], (key, got[key])

    table = pq.read_table(tmp_path / "chunk-0001.predictions.parquet")
    assert table.column_names == list(PREDICTION_COLUMNS + EXPLANATION_COLUMNS)
    assert table.schema.metadata[b"scoring.chunk_id"] == b"chunk-0001"
    assert table.schema.metadata[b"scoring.errors"] == b"5"
    assert str(table.schema.field("bucket_start").type) == "timestamp[us, tz=UTC]"
    assert str(table.schema.field("device").type) == "string"
    predictions = table.to_pandas()
    for (device, sensor), group in predictions.groupby(["device", "sensor"]):
        expected = _expected_scores(world, device, sensor)
        np.testing.assert_allclose(group["score"].to_numpy(), expected, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(group["is_anomaly"].to_numpy(), expected >= 0.5)
    spikes = predictions[(predictions["device"] == "dev-a")]
    last = spikes["bucket_start"] == spikes["bucket_start"].max()
    assert spikes.loc[last, "is_anomaly"].all()  # every injected spike is caught
    assert spikes.loc[~last, "is_anomaly"].mean() < 0.05
    assert set(predictions["model_version"]) == {1, 3}


def test_row_order_and_ragged_sensors_do_not_matter(world, tmp_path):
    score_chunks(world["chunks"], world["models"], tmp_path)
    first = pq.read_table(tmp_path / "chunk-0001.predictions.parquet").to_pandas()
    second = pq.read_table(tmp_path / "chunk-0002.predictions.parquet").to_pandas()
    assert len(second) == len(first) - 10
    merged = second.merge(first, on=["device", "sensor", "bucket_start"], suffixes=("", "_1"))
    assert len(merged) == len(second)
    np.testing.assert_allclose(merged["score"], merged["score_1"], rtol=0, atol=1e-12)


def test_errors_file_is_written_before_predictions(world, tmp_path, monkeypatch):
    written = []
    original = score_module._write_parquet_atomic

    def recording(table, path, **options):
        original(table, path, **options)
        written.append(path.name)

    monkeypatch.setattr(score_module, "_write_parquet_atomic", recording)
    score_chunks(world["chunks"], world["models"], tmp_path, chunk_files=["chunk-0001.parquet"])
    assert written == ["chunk-0001.errors.parquet", "chunk-0001.predictions.parquet"]
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_unreadable_chunk_is_reported_and_others_continue(world, tmp_path):
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    (chunks / "bad.parquet").write_bytes(b"this is not parquet")
    (chunks / "good.parquet").write_bytes((world["chunks"] / "chunk-0001.parquet").read_bytes())
    out = tmp_path / "out"
    summary = score_chunks(chunks, world["models"], out)
    assert summary.chunks == 2 and summary.chunks_failed == 1
    assert summary.failed_chunks == ["bad"]
    # An empty predictions file carries the reason to whoever records the chunk.
    marker = pq.read_table(out / "bad.predictions.parquet")
    assert marker.num_rows == 0
    assert b"chunk file could not be read" in marker.schema.metadata[b"scoring.chunk_error"]
    errors = pq.read_table(out / "bad.errors.parquet")
    assert errors.column("device").to_pylist() == [None]
    assert "chunk file could not be read" in errors.column("reason")[0].as_py()
    assert errors.schema.metadata[b"scoring.chunk_unreadable"] == b"true"
    assert (out / "good.predictions.parquet").exists()


def test_rerun_overwrites_and_clears_stale_errors(world, tmp_path):
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    X, model = world["data"][("dev-a", "s1")]
    write_chunk(chunks / "c.parquet", [chunk_frame("dev-a", "s1", X, "absent.npz", 3)])
    out = tmp_path / "out"
    assert score_chunks(chunks, world["models"], out).sensors_failed == 1
    assert (out / "c.errors.parquet").exists()
    write_chunk(chunks / "c.parquet", [chunk_frame("dev-a", "s1", X, "run-1.npz", 3)])
    summary = score_chunks(chunks, world["models"], out)
    assert summary.sensors_failed == 0 and summary.rows_written == N_BUCKETS
    assert not (out / "c.errors.parquet").exists()
    assert pq.read_table(out / "c.predictions.parquet").schema.metadata[b"scoring.errors"] == b"0"


def test_worker_processes_give_the_same_predictions(world, tmp_path):
    # npz models only, so the spawned workers need not import scikit-learn (keeps this fast).
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    for i, sensors in enumerate([("s1", "s2", "s3"), ("s4", "s5", "s6")], start=1):
        frames = [
            chunk_frame("dev-a", sensor, world["data"][("dev-a", sensor)][0], "run-1.npz", 3)
            for sensor in sensors
        ]
        frames.append(
            chunk_frame(
                "dev-z", "absent", frames[0][list(DEFAULT_FEATURES)].to_numpy(), "run-1.npz", 3
            )
        )
        write_chunk(chunks / f"chunk-{i:04d}.parquet", frames)
    one = score_chunks(chunks, world["models"], tmp_path / "one")
    two = score_chunks(chunks, world["models"], tmp_path / "two", workers=2)
    assert (one.sensors_scored, one.sensors_failed, one.rows_written) == (6, 2, 6 * N_BUCKETS)
    assert (one.sensors_scored, one.sensors_failed, one.rows_written) == (
        two.sensors_scored,
        two.sensors_failed,
        two.rows_written,
    )
    for name in ("chunk-0001", "chunk-0002"):
        a = pq.read_table(tmp_path / "one" / f"{name}.predictions.parquet")
        b = pq.read_table(tmp_path / "two" / f"{name}.predictions.parquet")
        assert a.equals(b)


def test_cli_matches_the_function(world, tmp_path):
    score_chunks(world["chunks"], world["models"], tmp_path / "function")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scoring.score",
            "--chunks",
            str(world["chunks"]),
            "--models",
            str(world["models"]),
            "--output",
            str(tmp_path / "cli"),
            "--chunk",
            "chunk-0001.parquet",
            "--chunk",
            "chunk-0002.parquet",
        ],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr  # sensor failures are data, not a crash
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["chunks"] == 2 and summary["sensors_failed"] == 10
    for name in ("chunk-0001", "chunk-0002"):
        for suffix in ("predictions", "errors"):
            a = pq.read_table(tmp_path / "function" / f"{name}.{suffix}.parquet")
            b = pq.read_table(tmp_path / "cli" / f"{name}.{suffix}.parquet")
            assert a.equals(b), (name, suffix)


def test_cli_reports_unreadable_chunks_in_files_and_exits_zero(world, tmp_path):
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    (chunks / "bad.parquet").write_bytes(b"nope")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scoring.score",
            "--chunks",
            str(chunks),
            "--models",
            str(world["models"]),
            "--output",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip())["chunks_failed"] == 1
    assert (tmp_path / "out" / "bad.errors.parquet").exists()


def test_scoring_imports_nothing_from_the_app_or_azure():
    code = (
        "import sys, scoring, scoring.score, scoring.model_sets, scoring.kernels\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('shared', 'azure'))\n"
        "assert not bad, bad\n"
        # The npz hot path must not pay scikit-learn's import either.
        "assert 'sklearn' not in sys.modules\n"
        "import scoring.modeling\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('shared', 'azure'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_chunk_with_loose_types_is_cast_to_the_contract(world, tmp_path):
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    X, model = world["data"][("dev-a", "s4")]
    frame = chunk_frame("dev-a", "s4", X, "run-1.npz", 3).astype({"count": "int32"})
    frame["bucket_start"] = frame["bucket_start"].dt.tz_localize(None)  # naive: taken as UTC
    frame.to_parquet(chunks / "loose.parquet", index=False)  # ns timestamps, int32 counts
    summary = score_chunks(chunks, world["models"], tmp_path / "out")
    assert summary.sensors_scored == 1 and summary.sensors_failed == 0
    table = pq.read_table(tmp_path / "out" / "loose.predictions.parquet")
    assert str(table.schema.field("bucket_start").type) == "timestamp[us, tz=UTC]"
    assert table.column("bucket_start")[0].as_py().isoformat() == "2024-01-01T00:00:00+00:00"
    expected = graded_from_margin(model.anomaly_score(X), margin_unit(model.calibration))
    np.testing.assert_allclose(table.column("score").to_numpy(), expected, atol=1e-9)
