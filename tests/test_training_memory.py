"""Writing a training job's chunks streams the window: the timer's peak memory does not grow
with the fleet (as tests/test_prepare_memory.py checks for a run's preparation).

Two windows of one database on each engine: 1,000 sensors (5 chunks of 200) and 10,000 (50
chunks). ``write_training_chunks`` of each runs in a fresh child process, which reports how far
its peak RSS (VmHWM, reset just before via /proc/self/clear_refs) rose above its RSS before.
Readings go through the ingestion store, as the Event Hubs function stores them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.ingestion.store import insert_readings  # noqa: E402
from tests.test_prepare_memory import (  # noqa: E402
    LARGE_START,
    MARGIN_MIB,
    SMALL_START,
    _readings,
)


def _write_in_child(env: dict[str, str], start: datetime) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, json.dumps(env), start.isoformat()],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_training_chunks_peak_does_not_grow_with_the_fleet(ctx, env):
    insert_readings(ctx.engine, _readings(SMALL_START, 100))
    insert_readings(ctx.engine, _readings(LARGE_START, 1000))
    env = {**env, "SENSORS_PER_CHUNK": "200"}
    small = _write_in_child(env, SMALL_START)
    large = _write_in_child(env, LARGE_START)
    assert (small["sensors"], small["chunks"]) == (1000, 5)
    assert (large["sensors"], large["chunks"]) == (10000, 50)
    print(f"training chunks' RSS growth: 1x {small}, 10x {large}")
    assert large["growth_mib"] <= small["growth_mib"] + MARGIN_MIB, (small, large)


def _child(env_json: str, start_iso: str) -> None:
    """Write the training chunks of every sensor of the hour from ``start_iso``; print
    sensors, chunks and the RSS growth."""
    from shared.context import AppContext, set_context
    from shared.runs.windows import Window
    from shared.settings import Settings
    from shared.training import jobs
    from shared.training.prepare import write_training_chunks
    from shared.training.service import _sensors_with_data

    ctx = AppContext.create(Settings.from_env(json.loads(env_json)))
    set_context(ctx)
    start = datetime.fromisoformat(start_iso)
    window = Window(start, start + timedelta(hours=1))
    job = jobs.create_job(ctx.engine, f"memory-{start:%d}", window, "baseline", "local")
    sensors = _sensors_with_data(ctx, window)
    versions = dict.fromkeys(sensors, 1)
    ctx.store.upload(ctx.settings.chunks_container, "warm-up", b"")  # clients and container

    def kib(field: str) -> int:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))

    before = kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    prepared = write_training_chunks(ctx, job, sensors, versions, ("mean", "std"))
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
