"""Anomaly events benchmark: what keeping events up to date adds to recording one chunk.

A chunk of 1,000 sensors x 60 one-minute buckets (the default SENSORS_PER_CHUNK and an hourly
window) is recorded after ``--history`` earlier hourly windows of the same sensors, with a share
``--flagged`` of buckets flagged in runs of consecutive buckets (so events span windows and
the recompute re-reads open events). Timed, per window, in one transaction as recording does:
the predictions write (delete + bulk insert of the chunk's rows, with the explanation columns the
scoring step fills for sensors with a flag) and the events step (``update_events_for_chunk``,
which carries each event's peak explanation); then the same chunk recorded again (a
redelivery: nothing changes). SQLite always; PostgreSQL too when its binaries are installed
(``--postgres``).

    .venv/bin/python bench/bench_events.py [--sensors 1000 --history 24 --flagged 0.02]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import delete, func, insert, select  # noqa: E402

from shared.db import migrate  # noqa: E402
from shared.db.bulk import bulk_insert  # noqa: E402
from shared.db.engine import engine_for_url  # noqa: E402
from shared.db.schema import anomaly_events, predictions, run_chunks  # noqa: E402
from shared.events.tracking import update_events_for_chunk  # noqa: E402
from shared.runs import records  # noqa: E402
from shared.runs.recording import PREDICTION_ROW  # noqa: E402
from shared.runs.windows import Window  # noqa: E402

START = datetime(2026, 3, 1)


def flags_for(rng, n_sensors: int, n_buckets: int, share: float) -> np.ndarray:
    """Flagged buckets in bursts of 1-10 consecutive buckets, about ``share`` of all."""
    flags = np.zeros((n_sensors, n_buckets), dtype=bool)
    n_bursts = int(share * n_sensors * n_buckets / 5.5)
    sensors = rng.integers(0, n_sensors, n_bursts)
    starts = rng.integers(0, n_buckets, n_bursts)
    lengths = rng.integers(1, 11, n_bursts)
    for s, b, n in zip(sensors, starts, lengths, strict=True):
        flags[s, b : b + n] = True
    return flags


# An explanation as the scoring step writes it for a flagged bucket (scoring.explain), ~700 chars.
EXPLANATION = json.dumps(
    {
        "comparison": "max_vs_recent",
        "deviation": 28.1234,
        "deviations": {
            "level_vs_recent": 3.21,
            "level_vs_time_of_day": None,
            "max_vs_recent": 28.1234,
            "min_vs_recent": 1.2345,
            "spread_vs_recent": 7.4321,
        },
        "direction": "above",
        "expected": 14.6543,
        "expected_high": 17.6234,
        "expected_low": 11.9876,
        "feature": "max",
        "kind": "baseline",
        "model_format": "baseline-npz",
        "model_version": 3,
        "novel": [],
        "observed": 23.7612,
        "rule": "sustained",
        "score": 0.987654,
        "sensitivity": 0.5,
        "summary": "max_vs_recent: max 23.76 above the expected 11.99 to 17.62 (the median of "
        "the previous 48 buckets, 28.1 robust SDs); flagged sustained over the last 5 buckets, "
        "score 0.9877",
    },
    sort_keys=True,
    separators=(",", ":"),
)


def rows_for(run_id, window: Window, ids, flags, scores) -> list[tuple]:
    """Rows in PREDICTION_ROW order; sensors with a flag have a band on every bucket and an
    explanation on each flagged one (as the scoring step writes them), the others nulls."""
    rows = []
    for i, (device, sensor) in enumerate(ids):
        explained = bool(flags[i].any())
        for m in range(flags.shape[1]):
            rows.append(
                (
                    run_id,
                    "c00000",
                    device,
                    sensor,
                    window.start + timedelta(minutes=m),
                    12,
                    1.0,
                    0.5,
                    1.5,
                    0.1,
                    float(scores[i, m]),
                    bool(flags[i, m]),
                    1,
                    0.8 if explained else None,
                    1.2 if explained else None,
                    EXPLANATION if flags[i, m] else None,
                )
            )
    return rows


def record_chunk(engine, run_id, rows, gap) -> tuple[float, float, object]:
    with engine.begin() as conn:
        t0 = time.perf_counter()
        conn.execute(
            delete(predictions).where(
                predictions.c.run_id == run_id, predictions.c.chunk_id == "c00000"
            )
        )
        bulk_insert(conn, predictions, PREDICTION_ROW, rows)
        t1 = time.perf_counter()
        changes = update_events_for_chunk(conn, run_id, "c00000", gap, 60)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, changes


def bench(url: str, args) -> dict:
    engine = engine_for_url(url)
    migrate.upgrade(engine)
    rng = np.random.default_rng(7)
    ids = [
        (f"device-{d:04d}", f"sensor-{s:02d}") for d in range(args.sensors // 10) for s in range(10)
    ]
    write, events, redelivery, opened = [], [], [], 0
    for h in range(args.history + 1):
        window = Window(START + timedelta(hours=h), START + timedelta(hours=h + 1))
        run, _ = records.create_run(engine, window, "timer", "local", records.RunFilters())
        with engine.begin() as conn:
            conn.execute(
                insert(run_chunks),
                [
                    {
                        "run_id": run.run_id,
                        "chunk_id": "c00000",
                        "blob_path": "x",
                        "n_sensors": len(ids),
                        "n_rows": 60 * len(ids),
                        "status": records.CHUNK_WRITTEN,
                        "n_predictions": 0,
                        "n_anomalies": 0,
                        "n_errors": 0,
                    }
                ],
            )
        flags = flags_for(rng, len(ids), 60, args.flagged)
        scores = np.where(
            flags, rng.uniform(0.5, 1.0, flags.shape), rng.uniform(0, 0.5, flags.shape)
        )
        rows = rows_for(run.run_id, window, ids, flags, scores)
        w, e, changes = record_chunk(engine, run.run_id, rows, args.gap)
        opened += changes.opened
        if h >= args.history - 4:  # the last five windows, with history in the tables
            write.append(w)
            events.append(e)
            _, again, repeat = record_chunk(engine, run.run_id, rows, args.gap)
            assert repeat.changed == 0, repeat
            redelivery.append(again)
    with engine.connect() as conn:
        n_events = conn.execute(select(func.count()).select_from(anomaly_events)).scalar_one()
        n_rows = conn.execute(select(func.count()).select_from(predictions)).scalar_one()
    engine.dispose()
    return {
        "engine": url.split(":", 1)[0],
        "predictions_rows": n_rows,
        "events": n_events,
        "write_s": statistics.median(write),
        "events_s": statistics.median(events),
        "redelivery_events_s": statistics.median(redelivery),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--history", type=int, default=24, help="earlier hourly windows (24)")
    parser.add_argument("--flagged", type=float, default=0.02, help="share flagged (0.02)")
    parser.add_argument("--gap", type=int, default=300, help="EVENT_GAP_BUCKETS (300)")
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(bench(f"sqlite:///{tmp}/bench.db", args))
        if args.postgres:
            from shared.local.postgres import start_postgres

            server = start_postgres()
            try:
                results.append(bench(server.create_database("bench_events"), args))
            finally:
                server.stop()
    print(
        f"chunk: {args.sensors} sensors x 60 buckets, {args.flagged:.0%} flagged, "
        f"EVENT_GAP_BUCKETS={args.gap}, after {args.history} hourly windows (median of 5)"
    )
    print(f"{'engine':<12}{'rows':>11}{'events':>9}{'write s':>10}{'events s':>10}{'again s':>10}")
    for r in results:
        print(
            f"{r['engine']:<12}{r['predictions_rows']:>11,}{r['events']:>9,}"
            f"{r['write_s']:>10.3f}{r['events_s']:>10.3f}{r['redelivery_events_s']:>10.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
