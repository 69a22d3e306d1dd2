"""What explanations (``scoring/explain.py``) add to the scoring step.

Default-detector chunks of ``--sensors`` sensors (1,000 per chunk, 48 context + 60 window
buckets of 12 readings with a daily cycle; a share ``--spikes`` of buckets gets one reading
15 SD high) are scored in this process with ``score_chunks(workers=1)``, alternately with
explanations and with ``scoring.score.explain_chunk`` replaced by one that returns nothing (the
scoring step as it was before explanations). CPU seconds (``time.process_time``, less sensitive
to other jobs on the machine than wall time) of each pass, best of ``--repeat``, and of the
explanations alone.

    .venv/bin/python bench/bench_explain.py [--sensors 10000 --spikes 0.005 --repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scoring.score as score_module  # noqa: E402
from scoring import baseline  # noqa: E402
from scoring.features import CONTEXT_BUCKETS  # noqa: E402
from scoring.model_sets import SensorModel  # noqa: E402
from scoring.modeling import fit_sensor_model, write_model_set  # noqa: E402

PER_CHUNK = 1000
WINDOW = 60


def _features(rng, minutes: np.ndarray, spikes: np.ndarray | None = None) -> np.ndarray:
    day = (minutes % 1440) / 1440
    readings = (20 + 5 * np.sin(2 * np.pi * day))[:, None] + rng.normal(0, 1, (len(minutes), 12))
    if spikes is not None:
        readings[spikes, 0] += 15.0
    return np.stack(
        [readings.mean(1), readings.min(1), readings.max(1), readings.std(1), day], axis=1
    )


def make(root: Path, n_sensors: int, spike_share: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    train = np.arange(3 * 1440)
    fitted = fit_sensor_model(
        "d",
        "s",
        1,
        _features(rng, train),
        features=baseline.FEATURES,
        estimator=baseline.RobustBaseline(),
    )
    ids = [(f"dev-{i // 10:05d}", f"s{i % 10}") for i in range(n_sensors)]
    (root / "models").mkdir(parents=True)
    (root / "chunks").mkdir()
    write_model_set(
        root / "models" / "set.baseline.npz",
        [
            SensorModel(d, s, 1, baseline.FEATURES, fitted.estimator, 0.5, fitted.calibration)
            for d, s in ids
        ],
    )
    minutes = train[-1] + 1 + np.arange(CONTEXT_BUCKETS + WINDOW)
    stamps = pd.Timestamp("2026-03-01", tz="UTC") + pd.to_timedelta(minutes, unit="min")
    context = np.arange(len(minutes)) < CONTEXT_BUCKETS
    for c in range(0, n_sensors, PER_CHUNK):
        frames = []
        for device, sensor in ids[c : c + PER_CHUNK]:
            spikes = np.flatnonzero(rng.random(WINDOW) < spike_share) + CONTEXT_BUCKETS
            X = _features(rng, minutes, spikes)
            frames.append(
                pd.DataFrame(
                    {
                        "device": device,
                        "sensor": sensor,
                        "bucket_start": stamps,
                        "count": 12,
                        "mean": X[:, 0],
                        "min": X[:, 1],
                        "max": X[:, 2],
                        "std": X[:, 3],
                        "model_file": "set.baseline.npz",
                        "model_version": 1,
                        "context": context,
                    }
                )
            )
        table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
        pq.write_table(table, root / "chunks" / f"c{c // PER_CHUNK:05d}.parquet")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sensors", type=int, default=10_000)
    parser.add_argument("--spikes", type=float, default=0.005, help="share of spiked buckets")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    explain_chunk = score_module.explain_chunk
    spent: list[float] = []

    def timed(*a, **k):
        started = time.process_time()
        try:
            return explain_chunk(*a, **k)
        finally:
            spent.append(time.process_time() - started)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make(root, args.sensors, args.spikes, args.seed)
        runs: dict[str, list[float]] = {"with": [], "without": []}
        explaining: list[float] = []
        for rep in range(args.repeat):
            for mode in ("without", "with"):
                score_module.explain_chunk = timed if mode == "with" else (lambda *a, **k: None)
                spent.clear()
                started = time.process_time()
                summary = score_module.score_chunks(
                    root / "chunks", root / "models", root / f"out-{mode}-{rep}", workers=1
                )
                runs[mode].append(time.process_time() - started)
                if mode == "with":
                    explaining.append(sum(spent))
        score_module.explain_chunk = explain_chunk
        out = root / f"out-with-{args.repeat - 1}"
        flagged, explained_sensors = 0, 0
        for path in out.glob("*.predictions.parquet"):
            table = pq.read_table(path, columns=["device", "sensor", "is_anomaly", "expected_low"])
            flagged += int(table["is_anomaly"].to_numpy().sum())
            frame = table.to_pandas()
            explained_sensors += (
                frame[frame["expected_low"].notna()].groupby(["device", "sensor"]).ngroups
            )
    result = {
        "sensors": args.sensors,
        "rows": summary.rows_written,
        "flagged": flagged,
        "explained_sensors": explained_sensors,
        "cpu_s_without": round(min(runs["without"]), 3),
        "cpu_s_with": round(min(runs["with"]), 3),
        "cpu_s_explanations": round(min(explaining), 3),
    }
    print(
        f"{args.sensors:,} sensors, {flagged:,} flagged buckets, {explained_sensors:,} sensors "
        f"explained: CPU {result['cpu_s_without']:.2f} s without explanations, "
        f"{result['cpu_s_with']:.2f} s with ({result['cpu_s_explanations']:.2f} s explaining)"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
