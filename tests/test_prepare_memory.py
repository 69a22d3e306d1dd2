"""Preparing a run streams the window: its peak memory does not grow with the fleet (issue 12).

Two windows of one database on each engine: the first holds 1,000 sensors (5 chunks of 200),
the second 10,000 (50 chunks). ``prepare_run`` of each runs in a fresh child process, which
reports how far its peak RSS (VmHWM, reset just before via /proc/self/clear_refs) rose above its
RSS before preparing. Holding the window (as ``fetchall()`` did) costs ~600 bytes per bucket
row, so the 10x fleet would add ~300 MiB; streamed, both stay at about one read partition plus
two chunks (one being written on a background thread while the next is read).

Readings go through the ingestion store, as the Event Hubs function stores them. The registry
rows (a model set, a model and an active version per sensor) are inserted directly: preparation
reads only those rows, never the model files, so no model is trained here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.db.schema import active_models, model_sets, models  # noqa: E402
from shared.ingestion.store import insert_readings  # noqa: E402
from shared.ingestion.validation import Reading  # noqa: E402

SMALL_START = datetime(2026, 3, 1, 0)  # 100 devices x 10 sensors
LARGE_START = datetime(2026, 3, 2, 0)  # 1,000 devices x 10 sensors, a day later (no overlap)
SENSORS_PER_DEVICE = 10
MIB = 1024 * 1024
# Allowed growth of the 10x fleet's peak over the 1x fleet's: allocator noise, not the window
# (holding the 10x window adds ~320 MiB: measured 83 -> 401 MiB before streaming).
MARGIN_MIB = 60


def _readings(start: datetime, devices: int) -> list[Reading]:
    return [
        Reading(
            start + timedelta(minutes=minute),
            f"dev-{d:05d}",
            f"s{s:02d}",
            float((d * 7 + s * 3 + minute) % 50) + 0.25 * s,
        )
        for minute in range(60)
        for d in range(devices)
        for s in range(SENSORS_PER_DEVICE)
    ]


def _register(conn, devices: int) -> None:
    now = datetime(2026, 3, 1)
    conn.execute(
        insert(model_sets),
        [
            {
                "set_id": "set-memory",
                "format": "baseline",
                "blob_path": "sets/set-memory.npz",
                "n_models": devices * SENSORS_PER_DEVICE,
                "train_start": now,
                "train_end": now,
                "created_at": now,
            }
        ],
    )
    keys = [
        (f"dev-{d:05d}", f"s{s:02d}") for d in range(devices) for s in range(SENSORS_PER_DEVICE)
    ]
    common = {
        "version": 1,
        "set_id": "set-memory",
        "format": "baseline",
        "blob_path": "sets/set-memory.npz",
        "training_key": "memory",
        "estimator": "baseline",
        "features": "mean",
        "train_start": now,
        "train_end": now,
        "n_samples": 60,
        "threshold": 1.0,
        "calibration": None,
        "created_at": now,
    }
    conn.execute(insert(models), [{"device": d, "sensor": s, **common} for d, s in keys])
    conn.execute(
        insert(active_models),
        [{"device": d, "sensor": s, "version": 1, "activated_at": now} for d, s in keys],
    )


def _prepare_in_child(env: dict[str, str], start: datetime) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, json.dumps(env), start.isoformat()],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_prepare_peak_does_not_grow_with_the_fleet(ctx, env):
    insert_readings(ctx.engine, _readings(SMALL_START, 100))
    insert_readings(ctx.engine, _readings(LARGE_START, 1000))
    with ctx.engine.begin() as conn:
        _register(conn, 1000)
    env = {**env, "SENSORS_PER_CHUNK": "200"}
    small = _prepare_in_child(env, SMALL_START)
    large = _prepare_in_child(env, LARGE_START)
    assert (small["sensors"], small["chunks"]) == (1000, 5)
    assert (large["sensors"], large["chunks"]) == (10000, 50)
    print(f"prepare's RSS growth: 1x {small}, 10x {large}")
    assert large["growth_mib"] <= small["growth_mib"] + MARGIN_MIB, (small, large)


def _child(env_json: str, start_iso: str) -> None:
    """Prepare the hour from ``start_iso`` and print sensors, chunks and the RSS growth."""
    from shared.context import AppContext, set_context
    from shared.runs import records
    from shared.runs.prepare import prepare_run
    from shared.runs.windows import Window
    from shared.settings import Settings

    ctx = AppContext.create(Settings.from_env(json.loads(env_json)))
    set_context(ctx)
    start = datetime.fromisoformat(start_iso)
    run, _ = records.create_run(
        ctx.engine, Window(start, start + timedelta(hours=1)), "cli", "local", records.RunFilters()
    )
    ctx.store.upload(ctx.settings.chunks_container, "warm-up", b"")  # clients and container
    with ctx.engine.connect():
        pass

    def kib(field: str) -> int:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))

    before = kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    prepared = prepare_run(ctx, run)
    growth = (kib("VmHWM") - before) / 1024
    print(
        json.dumps(
            {
                "sensors": prepared.n_sensors,
                "chunks": len(prepared.chunks),
                "growth_mib": round(growth, 1),
                "pid": os.getpid(),
            }
        )
    )


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
else:
    pytestmark = pytest.mark.skipif(
        not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc"
    )


def test_chunks_are_written_in_order_one_at_a_time_and_a_writers_error_comes_out(monkeypatch):
    """``prepare._ChunkWriter`` writes on a background thread while the next chunk is read: the
    chunks keep their order and numbers, no more than one is in flight, and an error of the
    writer (storage down) fails the preparation instead of being lost on the thread."""
    import threading
    import time

    from shared.runs import prepare

    written, in_flight, lock = [], [0], threading.Lock()

    def slow_write(ctx, run, index, members, refs, rows):
        with lock:
            in_flight[0] += 1
            assert in_flight[0] == 1, "two chunks written at once"
        time.sleep(0.01)
        if members == ["boom"]:
            in_flight[0] -= 1
            raise OSError("storage down")
        written.append((index, list(members)))
        with lock:
            in_flight[0] -= 1

    monkeypatch.setattr(prepare, "_write_chunk", slow_write)
    with prepare._ChunkWriter(None, None, [], []) as writer:
        for i in range(5):
            writer.write([f"chunk {i}"])
    assert written == [(i, [f"chunk {i}"]) for i in range(5)]

    with (
        pytest.raises(OSError, match="storage down"),
        prepare._ChunkWriter(None, None, [], []) as writer,
    ):
        writer.write(["boom"])
        writer.write(["never written"])
    assert len(written) == 5
