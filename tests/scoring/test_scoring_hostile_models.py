"""Crafted model files against the scoring step (issue 11, item 6).

A skops entry names its types; the allow-list check must judge those names as strings before it
imports anything (``numpy.f2py.__main__`` runs f2py's command line on import and raises
``SystemExit``), and the scoring step's boundary must turn anything a model raises, whatever its
type, into that sensor's or chunk's failure. The step is run as Azure ML runs it,
``python -m scoring.score``, in a subprocess.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import skops.io as sio
from scoring_testdata import REPO, chunk_frame, subprocess_env, uniform_buckets, write_chunk
from sklearn.preprocessing import StandardScaler

from scoring.model_sets import (
    ModelSet,
    SensorScores,
    UntrustedModelError,
    check_trusted_types,
    load_model_set,
)
from scoring.modeling import fit_sensor_model, write_model_set
from scoring.score import ModelSetCache, score_chunk

# Names a crafted skops entry may give as its types. Each is refused without importing it.
HOSTILE_TYPE_NAMES = [
    "numpy.f2py.__main__.X",  # importing it runs f2py's command line: SystemExit
    "numpy.__main__.X",
    "sklearn.__main__.X",
    "numpy.f2py.f2py2e.main",
    "numpy.distutils.core.setup",
    "numpy.testing._private.utils.Tester",
    "scipy._lib._testutils.PytestTester",
    "sklearn.utils._testing.TempMemmap",
    "sklearn.conftest.X",
    "builtins.exec",
    "os.system",
    "numpy..X",
    "numpy.load",  # a function
    "numpy.AxisError",  # an exception class
    "numpy",
    "__import__('os').system",
]


def _hostile_entry(type_module: str, type_class: str) -> bytes:
    """A skops file whose top-level object claims to be ``type_module.type_class``."""
    data = sio.dumps(StandardScaler().fit(np.arange(8.0).reshape(4, 2)))
    source = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(source.read("schema.json"))
    schema["__module__"], schema["__class__"] = type_module, type_class
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.namelist():
            body = json.dumps(schema) if item == "schema.json" else source.read(item)
            target.writestr(item, body)
    return out.getvalue()


def _hostile_set(path, device: str, sensor: str, entry: bytes) -> None:
    manifest = {
        "format": "skops",
        "format_version": 1,
        "models": [
            {
                "device": device,
                "sensor": sensor,
                "version": 1,
                "features": ["mean", "std", "min", "max"],
                "threshold": 0.0,
                "score_kind": "decision_function",
                "calibration": {},
                "entry": "models/000000.skops",
            }
        ],
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("models/000000.skops", entry)
        archive.writestr("manifest.json", json.dumps(manifest))


def test_hostile_type_names_are_refused_without_importing_anything():
    """In a fresh interpreter: every name is refused and no module of theirs is imported."""
    script = f"""
import sys
from scoring.model_sets import UntrustedModelError, check_trusted_types
names = {HOSTILE_TYPE_NAMES!r}
before = set(sys.modules)
refused = 0
for name in names:
    try:
        check_trusted_types([name])
    except UntrustedModelError:
        refused += 1
imported = sorted(
    m for m in set(sys.modules) - before
    if any(part in m for part in ("f2py", "distutils", "__main__", "conftest", "test"))
)
print(refused, len(names), imported)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    refused, total, imported = done.stdout.strip().split(" ", 2)
    assert int(refused) == int(total) == len(HOSTILE_TYPE_NAMES), done.stdout
    assert imported == "[]", f"the trust check imported {imported}"
    # Classes of the allowed packages still pass.
    assert check_trusted_types(["sklearn.preprocessing._data.StandardScaler", "numpy.dtype"])
    with pytest.raises(UntrustedModelError):
        check_trusted_types(["numpy.f2py.__main__.X"])


def test_scoring_step_fails_only_the_sensor_of_a_crafted_model(tmp_path):
    """``numpy.f2py.__main__.X`` in a skops entry used to exit the step 0 having written
    nothing; now that sensor fails with the reason and its neighbour is scored."""
    rng = np.random.default_rng(3)
    models_dir, chunks_dir, output = tmp_path / "models", tmp_path / "chunks", tmp_path / "out"
    models_dir.mkdir()
    chunks_dir.mkdir()
    healthy = fit_sensor_model("dev", "ok", 1, uniform_buckets(rng, 10, 15, 200))
    write_model_set(models_dir / "good.npz", [healthy])
    crafted = {
        "f2py.skops.zip": _hostile_entry("numpy.f2py.__main__", "X"),
        "main.skops.zip": _hostile_entry("sklearn.__main__", "X"),
        "exec.skops.zip": _hostile_entry("builtins", "exec"),
        "garbage.skops.zip": b"not a skops file at all",
    }
    frames = [chunk_frame("dev", "ok", uniform_buckets(rng, 10, 15, 30), "good.npz", 1)]
    for name, entry in crafted.items():
        _hostile_set(models_dir / name, "dev", name, entry)
        frames.append(chunk_frame("dev", name, uniform_buckets(rng, 10, 15, 30), name, 1))
    write_chunk(chunks_dir / "c00000.parquet", frames)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scoring.score",
            "--chunks",
            str(chunks_dir),
            "--models",
            str(models_dir),
            "--output",
            str(output),
        ],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["sensors_scored"], summary["sensors_failed"]) == (1, len(crafted))
    predictions = pq.read_table(output / "c00000.predictions.parquet")
    assert set(predictions.column("sensor").to_pylist()) == {"ok"}
    assert predictions.num_rows == 30
    errors = pq.read_table(output / "c00000.errors.parquet").to_pylist()
    reasons = {e["sensor"]: e["reason"] for e in errors}
    assert set(reasons) == set(crafted)
    for name in ("f2py.skops.zip", "main.skops.zip", "exec.skops.zip"):
        assert "allow-list" in reasons[name], reasons[name]


class _RaisingModelSet(ModelSet):
    """A model set whose evaluation raises a ``BaseException`` (as code reached through a stored
    model may), for the boundary of :func:`score_chunk`."""

    format = "test-raising"

    def __init__(self, path, exc: BaseException, where: str):
        super().__init__(path, ["dev"], ["bad"], [1], [("mean", "std", "min", "max")], [0.0])
        self.exc, self.where = exc, where

    def lookup(self, devices, sensors, versions):
        if self.where == "lookup":
            raise self.exc
        return super().lookup(devices, sensors, versions)

    def score(self, model_index, X, n_buckets) -> SensorScores:
        raise self.exc


class _Cache(ModelSetCache):
    def __init__(self, models_dir, raising: ModelSet):
        super().__init__(models_dir)
        self.raising = raising

    def get(self, name: str) -> ModelSet:
        return self.raising if name == "raising.npz" else super().get(name)


@pytest.mark.parametrize(
    "exc",
    [SystemExit(0), SystemExit(3), GeneratorExit(), BaseExceptionGroup("x", [SystemExit(1)])],
    ids=["SystemExit0", "SystemExit3", "GeneratorExit", "BaseExceptionGroup"],
)
@pytest.mark.parametrize("where", ["lookup", "score"])
def test_any_base_exception_from_a_model_fails_its_sensors_only(tmp_path, exc, where):
    rng = np.random.default_rng(5)
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    healthy = fit_sensor_model("dev", "ok", 1, uniform_buckets(rng, 10, 15, 200))
    write_model_set(models_dir / "good.npz", [healthy])
    chunk = write_chunk(
        tmp_path / "c00000.parquet",
        [
            chunk_frame("dev", "ok", uniform_buckets(rng, 10, 15, 20), "good.npz", 1),
            chunk_frame("dev", "bad", uniform_buckets(rng, 10, 15, 20), "raising.npz", 1),
        ],
    )
    cache = _Cache(models_dir, _RaisingModelSet(models_dir / "raising.npz", exc, where))
    result = score_chunk(chunk, tmp_path, cache)
    assert (result.sensors_scored, result.sensors_failed, result.error) == (1, 1, None)
    errors = pq.read_table(tmp_path / "c00000.errors.parquet").to_pylist()
    assert [e["sensor"] for e in errors] == ["bad"]
    assert type(exc).__name__ in errors[0]["reason"]
    assert pq.read_table(tmp_path / "c00000.predictions.parquet").num_rows == 20


def test_a_model_set_that_cannot_load_is_remembered_as_a_failure(tmp_path):
    path = tmp_path / "f2py.skops.zip"
    _hostile_set(path, "dev", "s", _hostile_entry("numpy.f2py.__main__", "X"))
    loaded = load_model_set(path)  # the manifest is data
    with pytest.raises(UntrustedModelError):
        loaded.model(0)
