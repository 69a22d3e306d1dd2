"""Benchmark of the scoring step against the reference's shape, a naive loop and the floor.

Usage::

    python bench/bench_scoring.py [--sensors 100000] [--buckets 60] [--workers 2]

Everything runs in one invocation on a temp folder and prints a table and one JSON line:

(a) reference shape: one Python process per sensor that reads that sensor's CSV, unpickles one
    scikit-learn pipeline, predicts and writes a CSV (as the reference's per-sensor pipeline
    steps did, minus the container). A sample is timed sequentially and extrapolated with both
    cores busy.
(b) naive in-process loop: ``pipeline.decision_function`` per sensor on in-memory data; a sample
    is timed and extrapolated (one process).
(c) floor: :func:`scoring.kernels.ocsvm_decision_function` over every sensor at once, data and
    prepared parameters already in memory (one process, no I/O, no grouping).
(d) ours: ``python -m scoring.score`` end to end over files (read chunk Parquet and model set
    files, group, score, write predictions), as a subprocess with ``--workers`` processes and
    with 1 process; throughput from the summary's own ``seconds``, peak RSS by sampling the
    resident memory of the whole process tree every 20 ms (plus ``getrusage`` of children).

Synthetic data: sensors have uniform readings (12 per 1-minute bucket) over their own range,
with ~0.5 % spike buckets. Fitting 100,000 SVMs would take long, so ``--fit-models`` real default
models are fitted on 240 training buckets each, and every other sensor's model is a replica of one
of them re-centred to that sensor's range: the scaler mean is shifted by the range offset and the
scale multiplied by ``1 + N(0, 0.02)``; support vectors, dual coefficients, intercept and gamma
are the fitted ones. Replicas are exact scikit-learn pipelines too (a deep copy with the new
scaler attributes), so (a), (b) and (d) evaluate the same models; the benchmark checks that (d)'s
scores equal (b)'s (graded as the scoring step grades margins: ``0.5 + 0.5 tanh(margin)``).

The default detector (:mod:`scoring.baseline`, ``"baseline-npz"`` model sets), measured beside
the reference one-class SVM above in the same invocation:

(e) ours with the default detector: ``python -m scoring.score`` end to end over files, as (d),
    with ``--workers`` processes and with 1. Its chunks carry, per sensor, the
    :data:`~scoring.features.CONTEXT_BUCKETS` (48) buckets before the window as context rows
    plus ``--buckets`` window rows, as ``shared.runs.prepare`` writes them: chunks are bigger,
    so rates are given in sensors/s and in window rows/s (predictions written).
(f) its floor: :func:`scoring.baseline.score` over every sensor at once, in memory (best of 3),
    told each sensor's context rows as the scoring step tells it (their scores are not computed).

``--baseline-fit-models`` real :class:`~scoring.baseline.RobustBaseline` models are fitted on
``--baseline-train-days`` days of 1-minute buckets (12 uniform readings each, same generator);
every sensor's model is a replica of one of them re-centred to the sensor's range (level
parameters shifted by the range offset, spreads kept). The benchmark checks that (e)'s scores
equal (f)'s for the window rows, and prints the ratio of (e) to (d) against the target: the
default must stay within 2x of the reference's scoring throughput (ratio >= 0.5).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from scoring import baseline  # noqa: E402
from scoring.features import (  # noqa: E402
    CONTEXT_BUCKETS,
    CONTEXT_COLUMN,
    DEFAULT_FEATURES,
    derived_feature,
)
from scoring.kernels import OcsvmArrays, ocsvm_decision_function  # noqa: E402
from scoring.model_sets import (  # noqa: E402
    PackedOneClassSVM,
    SensorModel,
    graded_from_margin,
    margin_unit,
    write_baseline_model_set,
    write_npz_model_set,
)
from scoring.modeling import fit_sensor_model  # noqa: E402

READINGS_PER_BUCKET = 12
TRAIN_BUCKETS = 240
SENSORS_PER_DEVICE = 10

REFERENCE_SCRIPT = """
import pickle, sys
import pandas as pd
data = pd.read_csv(sys.argv[1])
with open(sys.argv[2], "rb") as handle:
    model = pickle.load(handle)
data["score"] = model.decision_function(data[["mean", "std", "min", "max"]].to_numpy())
data["anomaly"] = model.predict(data[["mean", "std", "min", "max"]].to_numpy()) == -1
data.to_csv(sys.argv[3], index=False)
"""


def bucket_features(
    rng: np.random.Generator, lo: np.ndarray, width: np.ndarray, n: int, spike_rate: float = 0.0
) -> np.ndarray:
    """Features (mean, std, min, max) of `n` buckets for each sensor: (sensors, n, 4)."""
    readings = lo[:, None, None] + width[:, None, None] * rng.random(
        (len(lo), n, READINGS_PER_BUCKET)
    )
    if spike_rate:
        spikes = rng.random((len(lo), n)) < spike_rate
        readings[spikes, 0] += 3 * width[np.nonzero(spikes)[0]]
    return np.stack(
        [readings.mean(-1), readings.std(-1), readings.min(-1), readings.max(-1)], axis=-1
    )


def fit_base_models(n_models: int, seed: int) -> tuple[list[SensorModel], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lo = rng.uniform(0, 100, n_models)
    width = rng.uniform(2, 10, n_models)
    X = bucket_features(rng, lo, width, TRAIN_BUCKETS)
    models = [fit_sensor_model("base", f"b{i}", 1, X[i]) for i in range(n_models)]
    return models, lo, width


def replica_pipeline(base: SensorModel, shift: float, factor: float):
    pipeline = copy.deepcopy(base.estimator)
    scaler = pipeline.steps[0][1]
    scaler.mean_ = scaler.mean_ + np.array([shift, 0.0, shift, shift])  # std is shift-invariant
    scaler.scale_ = scaler.scale_ * factor
    return pipeline


class RssSampler(threading.Thread):
    """Peak of the summed resident memory of a process and its descendants (Linux /proc)."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_bytes = pid, interval, 0
        self._stop_event = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _tree_rss(self) -> int:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as handle:
                        ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        total, todo = 0, [self.pid]
        while todo:
            pid = todo.pop()
            todo.extend(children.get(pid, []))
            try:
                with open(f"/proc/{pid}/statm") as handle:
                    total += int(handle.read().split()[1]) * self._page
            except (OSError, IndexError, ValueError):
                pass
        return total

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_bytes = max(self.peak_bytes, self._tree_rss())
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def busy_cpu_seconds() -> float:
    """CPU seconds all processes of the machine have used (user + system, from /proc/stat)."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2]) / os.sysconf("SC_CLK_TCK")


def run_ours(root: Path, workers: int, kind: str = "") -> dict:
    output = root / f"out{kind}-{workers}"
    shutil.rmtree(output, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "scoring.score",
        "--chunks",
        str(root / f"chunks{kind}"),
        "--models",
        str(root / f"models{kind}"),
        "--output",
        str(output),
        "--workers",
        str(workers),
    ]
    busy_before = busy_cpu_seconds()
    ours_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sampler = RssSampler(process.pid)
    sampler.start()
    stdout, stderr = process.communicate()
    sampler.stop()
    wall = time.perf_counter() - started
    ours_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours_cpu = (ours_after.ru_utime - ours_before.ru_utime) + (
        ours_after.ru_stime - ours_before.ru_stime
    )
    # Other tenants of the machine compete for the same cores: report how busy the whole
    # machine was (ours included; worker CPU forked from the fork server is not in our rusage,
    # so "others" cannot be separated reliably). 2 workers alone make this close to 100%.
    machine_cpu = max(0.0, busy_cpu_seconds() - busy_before)
    if process.returncode != 0:
        raise RuntimeError(f"scoring failed ({process.returncode}): {stderr[-2000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {
        "summary": summary,
        "wall_seconds": wall,
        "cpu_seconds": ours_cpu,
        "machine_cpu_busy_share": machine_cpu / (wall * (os.cpu_count() or 1)),
        "peak_rss_bytes": sampler.peak_bytes,
        "output": output,
    }


_STARTED = time.perf_counter()


def note(message: str) -> None:
    """Progress on stderr (the table and the JSON line go to stdout)."""
    print(f"[{time.perf_counter() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


BASELINE = "-baseline"
"""Suffix of the default detector's folders (chunks-baseline, models-baseline, out-baseline-N)."""
MINUTE_US = 60 * 1_000_000


def baseline_features(
    rng: np.random.Generator,
    lo: np.ndarray,
    width: np.ndarray,
    bucket_start_us: np.ndarray,
    spike_rate: float = 0.0,
) -> np.ndarray:
    """:data:`scoring.baseline.FEATURES` of buckets starting at `bucket_start_us` for each
    sensor: (sensors, buckets, 5); day_fraction as the scoring step derives it."""
    feats = bucket_features(rng, lo, width, len(bucket_start_us), spike_rate)  # mean std min max
    day = derived_feature("day_fraction", bucket_start_us)
    out = np.empty(feats.shape[:2] + (len(baseline.FEATURES),))
    out[..., :4] = feats[..., [0, 2, 3, 1]]  # mean, min, max, std
    out[..., 4] = day
    return out


def fit_baseline_models(
    n_models: int, days: float, seed: int
) -> tuple[baseline.BaselineParams, np.ndarray, np.ndarray, float]:
    """Real RobustBaseline fits on `days` of 1-minute buckets; returns their stacked params,
    ranges and the first bucket start after training (us)."""
    rng = np.random.default_rng(seed + 1)
    lo = rng.uniform(0, 100, n_models)
    width = rng.uniform(2, 10, n_models)
    n = int(days * 1440)
    start_us = int(pd.Timestamp("2024-01-01", tz="UTC").value // 1000)
    starts = start_us + MINUTE_US * np.arange(n, dtype=np.int64)
    X = baseline_features(rng, lo, width, starts)
    params = baseline.stack_params(
        [baseline.RobustBaseline().fit(X[i]).params_ for i in range(n_models)]
    )
    return params, lo, width, start_us + n * MINUTE_US


def baseline_replicas(
    base: baseline.BaselineParams, base_of: np.ndarray, shift: np.ndarray
) -> baseline.BaselineParams:
    """Each sensor's state: its base model's, with the level parameters moved by `shift`."""
    params = base.take(base_of)
    params.low = params.low + shift
    params.high = params.high + shift
    params.profile = params.profile + shift[:, None]
    return params


def write_baseline_inputs(
    root: Path,
    rng: np.random.Generator,
    params: baseline.BaselineParams,
    lo: np.ndarray,
    width: np.ndarray,
    devices: np.ndarray,
    sensors: np.ndarray,
    window_start_us: int,
    buckets: int,
    chunk_sensors: int,
    set_models: int,
) -> tuple[np.ndarray, int]:
    """Model sets and chunks (context rows + window rows per sensor) of the default detector;
    returns the features of every row (sensors, CONTEXT_BUCKETS + buckets, 5) and the chunks."""
    from scoring.model_sets import FORMAT_BASELINE, model_set_filename

    n = len(lo)
    (root / f"models{BASELINE}").mkdir()
    (root / f"chunks{BASELINE}").mkdir()
    set_names = [
        model_set_filename(f"models-{i // set_models:03d}", FORMAT_BASELINE) for i in range(n)
    ]
    for start in range(0, n, set_models):
        stop = min(n, start + set_models)
        models = []
        for i in range(start, stop):
            estimator = baseline.RobustBaseline()
            estimator.params_ = params.take(np.array([i]))
            models.append(
                SensorModel(str(devices[i]), str(sensors[i]), 1, baseline.FEATURES, estimator, 0.0)
            )
        write_baseline_model_set(root / f"models{BASELINE}" / set_names[start], models)

    rows_per_sensor = CONTEXT_BUCKETS + buckets
    starts_us = window_start_us + MINUTE_US * np.arange(-CONTEXT_BUCKETS, buckets, dtype=np.int64)
    X = np.empty((n, rows_per_sensor, len(baseline.FEATURES)))
    ts = pa.array(np.tile(starts_us, chunk_sensors), pa.timestamp("us", tz="UTC"))
    context = np.tile(np.arange(rows_per_sensor) < CONTEXT_BUCKETS, chunk_sensors)
    n_chunks = 0
    for start in range(0, n, chunk_sensors):
        stop = min(n, start + chunk_sensors)
        feats = baseline_features(rng, lo[start:stop], width[start:stop], starts_us, 0.005)
        X[start:stop] = feats
        rows = (stop - start) * rows_per_sensor
        table = pa.table(
            {
                "device": np.repeat(devices[start:stop], rows_per_sensor),
                "sensor": np.repeat(sensors[start:stop], rows_per_sensor),
                "bucket_start": ts[:rows],
                "count": np.full(rows, READINGS_PER_BUCKET, dtype=np.int64),
                "mean": feats[..., 0].ravel(),
                "min": feats[..., 1].ravel(),
                "max": feats[..., 2].ravel(),
                "std": feats[..., 3].ravel(),
                "model_file": np.repeat(np.array(set_names[start:stop]), rows_per_sensor),
                "model_version": np.ones(rows, dtype=np.int64),
                CONTEXT_COLUMN: context[:rows],
            }
        )
        pq.write_table(table, root / f"chunks{BASELINE}" / f"chunk-{n_chunks:05d}.parquet")
        n_chunks += 1
    return X, n_chunks


def read_scores(output: Path, devices: np.ndarray, sensors: np.ndarray, buckets: int) -> np.ndarray:
    """Scores of a predictions folder as (sensors, buckets), checking rows come in sensor order
    (chunks hold consecutive sensors and scoring keeps the row order)."""
    table = pa.concat_tables(
        pq.read_table(p, columns=["device", "sensor", "score"])
        for p in sorted(output.glob("*.predictions.parquet"))
    )
    if not (
        np.array_equal(table["device"].to_numpy(), np.repeat(devices, buckets))
        and np.array_equal(table["sensor"].to_numpy(), np.repeat(sensors, buckets))
    ):
        raise RuntimeError("predictions are not one row per sensor and window bucket in order")
    return table["score"].to_numpy().reshape(len(devices), buckets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensors", type=int, default=100_000)
    parser.add_argument("--buckets", type=int, default=60)
    parser.add_argument("--chunk-sensors", type=int, default=1_000)
    parser.add_argument("--set-models", type=int, default=10_000, help="models per model set")
    parser.add_argument("--fit-models", type=int, default=300, help="real models to fit")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--reference-sample", type=int, default=20)
    parser.add_argument("--loop-sample", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--baseline-fit-models", type=int, default=50, help="real default-detector models to fit"
    )
    parser.add_argument(
        "--baseline-train-days", type=float, default=2.0, help="days of 1-minute buckets per fit"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs of each file-based measurement, (d) and (e) interleaved; the fastest counts "
        "(other jobs on the machine slow single runs)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args(argv)
    n, b = args.sensors, args.buckets
    rng = np.random.default_rng(args.seed)
    root = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    try:
        # ---------------------------------------------------------------- generate
        t0 = time.perf_counter()
        base_models, base_lo, base_width = fit_base_models(args.fit_models, args.seed)
        base_of = np.arange(n) % args.fit_models
        lo = rng.uniform(0, 1000, n)
        shift = lo - base_lo[base_of]
        factor = 1 + rng.normal(0, 0.02, n)
        width = base_width[base_of]
        fit_seconds = time.perf_counter() - t0

        base_params = [m.estimator for m in base_models]
        n_features = len(DEFAULT_FEATURES)
        max_sv = max(p.steps[1][1].support_vectors_.shape[0] for p in base_params)
        sv = np.zeros((args.fit_models, max_sv, n_features))
        dual = np.zeros((args.fit_models, max_sv))
        for i, p in enumerate(base_params):
            svm = p.steps[1][1]
            sv[i, : svm.support_vectors_.shape[0]] = svm.support_vectors_
            dual[i, : svm.support_vectors_.shape[0]] = svm.dual_coef_[0]
        mean = np.stack([p.steps[0][1].mean_ for p in base_params])[base_of]
        mean[:, [0, 2, 3]] += shift[:, None]
        arrays = OcsvmArrays(
            scaler_mean=mean,
            scaler_scale=np.stack([p.steps[0][1].scale_ for p in base_params])[base_of]
            * factor[:, None],
            support_vectors=sv[base_of],
            dual_coef=dual[base_of],
            n_support=np.array([p.steps[1][1].support_vectors_.shape[0] for p in base_params])[
                base_of
            ],
            intercept=np.array([p.steps[1][1].intercept_[0] for p in base_params])[base_of],
            gamma=np.array([p.steps[1][1]._gamma for p in base_params])[base_of],
        )
        thresholds = np.array([m.threshold for m in base_models])[base_of]
        devices = np.array([f"dev-{i // SENSORS_PER_DEVICE:06d}" for i in range(n)])
        sensors = np.array([f"sensor-{i % SENSORS_PER_DEVICE}" for i in range(n)])
        set_names = [f"models-{i // args.set_models:03d}.npz" for i in range(n)]

        (root / "models").mkdir()
        (root / "chunks").mkdir()
        for start in range(0, n, args.set_models):
            stop = min(n, start + args.set_models)
            models = [
                SensorModel(
                    str(devices[i]),
                    str(sensors[i]),
                    1,
                    DEFAULT_FEATURES,
                    PackedOneClassSVM(arrays, i, n_features),
                    float(thresholds[i]),
                    {"replica_of": int(base_of[i])},
                )
                for i in range(start, stop)
            ]
            write_npz_model_set(root / "models" / set_names[start], models)

        X_all = np.empty((n, b, n_features))
        bucket_start = pd.date_range("2024-01-01", periods=b, freq="min", tz="UTC")
        ts = pa.array(
            np.tile(bucket_start.as_unit("us").asi8, args.chunk_sensors),
            pa.timestamp("us", tz="UTC"),
        )
        n_chunks = 0
        for start in range(0, n, args.chunk_sensors):
            stop = min(n, start + args.chunk_sensors)
            feats = bucket_features(rng, lo[start:stop], width[start:stop], b, spike_rate=0.005)
            X_all[start:stop] = feats
            rows = (stop - start) * b
            table = pa.table(
                {
                    "device": np.repeat(devices[start:stop], b),
                    "sensor": np.repeat(sensors[start:stop], b),
                    "bucket_start": ts[:rows],
                    "count": np.full(rows, READINGS_PER_BUCKET, dtype=np.int64),
                    "mean": feats[..., 0].ravel(),
                    "min": feats[..., 2].ravel(),
                    "max": feats[..., 3].ravel(),
                    "std": feats[..., 1].ravel(),
                    "model_file": np.repeat(np.array(set_names[start:stop]), b),
                    "model_version": np.ones(rows, dtype=np.int64),
                }
            )
            pq.write_table(table, root / "chunks" / f"chunk-{n_chunks:05d}.parquet")
            n_chunks += 1
        generate_seconds = time.perf_counter() - t0
        note(f"reference: {args.fit_models} models fitted, {n_chunks} chunks written")

        t1 = time.perf_counter()
        base_params, bl_lo, bl_width, window_start_us = fit_baseline_models(
            args.baseline_fit_models, args.baseline_train_days, args.seed
        )
        bl_fit_seconds = time.perf_counter() - t1
        bl_of = np.arange(n) % args.baseline_fit_models
        bl_params = baseline_replicas(base_params, bl_of, lo - bl_lo[bl_of])
        X_bl, n_bl_chunks = write_baseline_inputs(
            root,
            rng,
            bl_params,
            lo,
            bl_width[bl_of],
            devices,
            sensors,
            window_start_us,
            b,
            args.chunk_sensors,
            args.set_models,
        )
        bl_generate_seconds = time.perf_counter() - t1
        note(f"default: {args.baseline_fit_models} models fitted, {n_bl_chunks} chunks written")

        # ---------------------------------------------------------------- (f) floor, default
        bl_floor_runs = []
        for _ in range(3):
            t = time.perf_counter()
            bl_floor_scores = baseline.score(X_bl, bl_params, np.full(n, CONTEXT_BUCKETS))
            bl_floor_runs.append(time.perf_counter() - t)
        bl_floor_seconds = min(bl_floor_runs)
        note(f"(f) default floor: {bl_floor_seconds:.2f} s")

        # ---------------------------------------------------------------- (c) floor
        prepared = arrays.prepared()
        floor_runs = []
        for _ in range(3):
            t = time.perf_counter()
            floor_decision = ocsvm_decision_function(X_all, prepared)
            floor_runs.append(time.perf_counter() - t)
        floor_seconds = min(floor_runs)
        note(f"(c) reference floor: {floor_seconds:.2f} s")

        # ---------------------------------------------------------------- (b) loop
        sample = rng.choice(n, size=min(args.loop_sample, n), replace=False)
        pipelines = {
            int(i): replica_pipeline(base_models[base_of[i]], shift[i], factor[i]) for i in sample
        }
        t = time.perf_counter()
        loop_scores = {
            i: thresholds[i] - p.decision_function(X_all[i]) for i, p in pipelines.items()
        }
        loop_seconds_per_sensor = (time.perf_counter() - t) / len(sample)
        floor_vs_sklearn = max(
            float(np.abs((thresholds[i] - floor_decision[i]) - s).max())
            for i, s in loop_scores.items()
        )

        # ---------------------------------------------------------------- (a) reference shape
        ref_dir = root / "reference"
        ref_dir.mkdir()
        script = ref_dir / "score_one.py"
        script.write_text(REFERENCE_SCRIPT)
        ref_sample = sample[: args.reference_sample]
        jobs = []
        for i in ref_sample:
            csv = ref_dir / f"sensor_{i}.csv"
            pd.DataFrame(X_all[i], columns=["mean", "std", "min", "max"]).to_csv(csv, index=False)
            model = ref_dir / f"model_{i}.pkl"
            model.write_bytes(pickle.dumps(pipelines[int(i)]))
            jobs.append(
                [sys.executable, str(script), str(csv), str(model), str(ref_dir / f"preds_{i}.csv")]
            )
        t = time.perf_counter()
        for job in jobs:
            subprocess.run(job, check=True)
        reference_seconds_per_sensor = (time.perf_counter() - t) / len(jobs)
        note("(a), (b) done")

        # ---------------------------------------------------------------- (d) ours
        # ---------------------------------------------------------------- (e) ours, default
        # Interleaved, best of --repeats: the machine's other jobs then weigh on both alike.
        def best(runs: list[dict]) -> dict:
            return min(runs, key=lambda r: r["summary"]["seconds"])

        measured: dict[tuple[str, int], list[dict]] = {}
        worker_counts = [args.workers] + ([1] if args.workers != 1 else [])
        for _ in range(max(1, args.repeats)):
            for workers in worker_counts:
                for kind in ("", BASELINE):
                    run = run_ours(root, workers, kind)
                    measured.setdefault((kind, workers), []).append(run)
                    note(
                        f"({'e' if kind else 'd'}) {workers} worker(s): "
                        f"{run['summary']['seconds']:.2f} s"
                    )
        ours = best(measured[("", args.workers)])
        ours_single = best(measured[("", 1)])
        bl_ours = best(measured[(BASELINE, args.workers)])
        bl_single = best(measured[(BASELINE, 1)])
        bl_scores = read_scores(bl_ours["output"], devices, sensors, b)
        bl_vs_floor = float(np.abs(bl_scores - bl_floor_scores[:, CONTEXT_BUCKETS:]).max())
        bl_anomaly_rate = float((bl_scores >= 0.5).mean())
        del X_bl, bl_scores, bl_floor_scores
        children_maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        self_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        # correctness: our scores from the files equal sklearn's for the loop sample
        scores = read_scores(ours["output"], devices, sensors, b)
        # the scoring step writes margins graded into [0, 1] (0.5 at the threshold); the
        # replicas' calibration has no decision quantiles, so their unit is margin_unit's 1.0
        unit = margin_unit({"replica_of": 0})
        ours_vs_sklearn = max(
            float(np.abs(scores[i] - graded_from_margin(expected, unit)).max())
            for i, expected in loop_scores.items()
        )
        anomaly_rate = float((scores >= 0.5).mean())
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    cores = os.cpu_count() or 1
    rate = {
        "a_reference_process_per_sensor": min(cores, 2) / reference_seconds_per_sensor,
        "b_sklearn_loop_in_process": 1 / loop_seconds_per_sensor,
        "c_floor_vectorised_in_memory": n / floor_seconds,
        f"d_ours_files_{args.workers}_workers": ours["summary"]["sensors_scored"]
        / ours["summary"]["seconds"],
        "d_ours_files_1_worker": ours_single["summary"]["sensors_scored"]
        / ours_single["summary"]["seconds"],
        f"e_default_files_{args.workers}_workers": bl_ours["summary"]["sensors_scored"]
        / bl_ours["summary"]["seconds"],
        "e_default_files_1_worker": bl_single["summary"]["sensors_scored"]
        / bl_single["summary"]["seconds"],
        "f_default_floor_in_memory": n / bl_floor_seconds,
    }
    window_rows_rate = {
        key: run["summary"]["rows_written"] / run["summary"]["seconds"]
        for key, run in [
            (f"d_ours_files_{args.workers}_workers", ours),
            ("d_ours_files_1_worker", ours_single),
            (f"e_default_files_{args.workers}_workers", bl_ours),
            ("e_default_files_1_worker", bl_single),
        ]
    }
    window_rows_rate["f_default_floor_in_memory"] = n * b / bl_floor_seconds
    ours_rate = rate[f"d_ours_files_{args.workers}_workers"]
    default_vs_reference = {
        f"{args.workers}_workers": rate[f"e_default_files_{args.workers}_workers"] / ours_rate,
        "1_worker": rate["e_default_files_1_worker"] / rate["d_ours_files_1_worker"],
    }
    within_2x = all(ratio >= 0.5 for ratio in default_vs_reference.values())
    result = {
        "sensors": n,
        "buckets": b,
        "chunks": n_chunks,
        "model_sets": -(-n // args.set_models),
        "fitted_models": args.fit_models,
        "mean_support_vectors": float(arrays.n_support.mean()),
        "max_support_vectors": int(arrays.n_support.max()),
        "generate_seconds": round(generate_seconds, 1),
        "fit_seconds": round(fit_seconds, 1),
        "sensors_per_second": {k: round(v, 1) for k, v in rate.items()},
        "seconds_for_all_sensors": {k: round(n / v, 2) for k, v in rate.items()},
        "ours_vs_b": round(ours_rate / rate["b_sklearn_loop_in_process"], 1),
        "ours_vs_a": round(ours_rate / rate["a_reference_process_per_sensor"], 1),
        "ours_time_vs_floor_time": round(rate["c_floor_vectorised_in_memory"] / ours_rate, 2),
        "ours_summary": ours["summary"],
        "ours_process_wall_seconds": round(ours["wall_seconds"], 2),
        "ours_process_cpu_seconds": round(ours["cpu_seconds"], 2),
        "ours_1_worker_summary_seconds": round(ours_single["summary"]["seconds"], 2),
        "machine_cpu_busy_share_during_ours": round(ours["machine_cpu_busy_share"], 3),
        "machine_cpu_busy_share_during_ours_1_worker": round(
            ours_single["machine_cpu_busy_share"], 3
        ),
        "ours_peak_rss_mib_tree_sampled": round(ours["peak_rss_bytes"] / 2**20, 1),
        "ours_1_worker_peak_rss_mib_tree_sampled": round(ours_single["peak_rss_bytes"] / 2**20, 1),
        "children_max_single_rss_mib_getrusage": round(children_maxrss / 2**20, 1),
        "bench_process_rss_mib_getrusage": round(self_maxrss / 2**20, 1),
        "max_abs_diff_floor_vs_sklearn": floor_vs_sklearn,
        "max_abs_diff_ours_files_vs_sklearn": ours_vs_sklearn,
        "anomaly_rate_ours": round(anomaly_rate, 4),
        "default_detector": {
            "chunks": n_bl_chunks,
            "rows_per_sensor": CONTEXT_BUCKETS + b,
            "context_rows_per_sensor": CONTEXT_BUCKETS,
            "fitted_models": args.baseline_fit_models,
            "train_days": args.baseline_train_days,
            "seasonal_share": round(float(bl_params.seasonal.mean()), 3),
            "fit_seconds": round(bl_fit_seconds, 1),
            "generate_seconds": round(bl_generate_seconds, 1),
            "window_rows_per_second": {k: round(v) for k, v in window_rows_rate.items()},
            "throughput_vs_reference": {k: round(v, 3) for k, v in default_vs_reference.items()},
            "target": "throughput_vs_reference >= 0.5 (within 2x of the reference)",
            "within_2x": within_2x,
            "summary": bl_ours["summary"],
            "1_worker_summary_seconds": round(bl_single["summary"]["seconds"], 2),
            "machine_cpu_busy_share": round(bl_ours["machine_cpu_busy_share"], 3),
            "peak_rss_mib_tree_sampled": round(bl_ours["peak_rss_bytes"] / 2**20, 1),
            "1_worker_peak_rss_mib_tree_sampled": round(bl_single["peak_rss_bytes"] / 2**20, 1),
            "max_abs_diff_files_vs_floor": bl_vs_floor,
            "anomaly_rate": round(bl_anomaly_rate, 4),
        },
        "repeats": max(1, args.repeats),
        "how_measured": {
            "a": f"{len(jobs)} sensors, one `python script.py` process each, sequential; "
            f"rate = {min(cores, 2)} cores / seconds per sensor",
            "b": f"{len(sample)} sensors, Pipeline.decision_function per sensor, one process",
            "c": "ocsvm_decision_function over all sensors in memory, best of 3, one process",
            "d": f"python -m scoring.score subprocess over {n_chunks} chunk files, "
            "rate from its summary seconds; RSS of its process tree sampled every 20 ms",
            "e": f"as (d) with the default detector over {n_bl_chunks} chunk files of "
            f"{CONTEXT_BUCKETS} context + {b} window rows per sensor; (d) and (e) interleaved, "
            f"fastest of {max(1, args.repeats)} runs each",
            "f": "scoring.baseline.score over all sensors' context + window rows in memory "
            "(context rows as history, not scored), best of 3, one process",
        },
    }
    width_ = max(len(k) for k in rate)
    print(f"\n{'method':<{width_}}  {'sensors/s':>12}  {'s for all':>10}  {'window rows/s':>14}")
    for key, value in rate.items():
        rows = f"{window_rows_rate[key]:>14,.0f}" if key in window_rows_rate else ""
        print(f"{key:<{width_}}  {value:>12,.0f}  {n / value:>10.2f}  {rows}")
    print(
        f"\nours ({args.workers} workers) vs (b): {result['ours_vs_b']}x; "
        f"ours time / floor time: {result['ours_time_vs_floor_time']}x; "
        f"peak RSS (tree): {result['ours_peak_rss_mib_tree_sampled']} MiB; "
        f"ours vs sklearn max |diff|: {ours_vs_sklearn:.2e}"
    )
    print(
        "Machine CPU busy (all processes, ours included) while ours ran: "
        f"{result['machine_cpu_busy_share_during_ours']:.0%} ({args.workers} workers), "
        f"{result['machine_cpu_busy_share_during_ours_1_worker']:.0%} (1 worker)"
    )
    print(
        "Default detector (e) vs reference (d), throughput: "
        + ", ".join(f"{v:.2f}x ({k.replace('_', ' ')})" for k, v in default_vs_reference.items())
        + f"; target >= 0.50x (within 2x): {'MET' if within_2x else 'NOT MET'}; "
        f"(e) vs its floor max |diff|: {bl_vs_floor:.2e}; "
        f"peak RSS (tree): {result['default_detector']['peak_rss_mib_tree_sampled']} MiB"
    )
    for key, text in result["how_measured"].items():
        print(f"  ({key}) {text}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
