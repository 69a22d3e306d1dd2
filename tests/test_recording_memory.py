"""Recording a predictions file: its peak memory does not grow with the file's rows (issue 12),
as tests/test_prepare_memory.py checks for a run's preparation.

Two runs of one database on each engine, each with one chunk of 60 s buckets over 24 hours: 10
sensors (14,400 prediction rows) and 100 sensors (144,000 rows), their chunk files written by
the run preparation's own code and their predictions files as the scoring step writes them,
explanations included (``bench/bench_recording.py`` builds both). ``record_predictions_blob``
of each runs in a fresh child process, which reports how far its peak RSS (VmHWM, reset just
before via /proc/self/clear_refs) rose above its RSS before recording.

Before issue 12 recording built a Python tuple per row (~700 bytes) and joined the keys as
strings with Arrow: the growth went from 73 to 241 MiB on SQLite, 71 to 228 on PostgreSQL. Now
the rows are written a slice at a time, the file is checked 50,000 rows at a time keeping one
integer code per row, and only the chunk file's key columns are read (by ranged reads). What
still grows with the file is its bytes (handed over by the host) and those codes, 4-8 bytes a
row (see bench/bench_recording.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_recording import prepare_chunk, record_in_child  # noqa: E402
from tests.test_prepare_memory import MARGIN_MIB  # noqa: E402

SMALL_START = datetime(2026, 3, 1)
LARGE_START = datetime(2026, 3, 3)  # two days later: another window, another run

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc"
)


def test_recording_peak_does_not_grow_with_the_file(ctx, env):
    small_blob = prepare_chunk(ctx, sensors=10, hours=24, start=SMALL_START)
    large_blob = prepare_chunk(ctx, sensors=100, hours=24, start=LARGE_START)
    small = record_in_child(env, small_blob)
    large = record_in_child(env, large_blob)
    assert (small["rows"], large["rows"]) == (14_400, 144_000)
    assert small["anomalies"] and large["anomalies"] > small["anomalies"]
    print(f"recording's RSS growth: 1x {small}, 10x {large}")
    assert large["growth_mib"] <= small["growth_mib"] + MARGIN_MIB, (small, large)


@pytest.mark.parametrize(
    "imports",
    ["import function_app, pyarrow as pa", "import pyarrow as pa, shared"],
    ids=["as-the-worker-imports", "pyarrow-first"],
)
def test_the_apps_processes_use_arrows_system_allocator(imports):
    """``shared/__init__.py`` makes Arrow allocate with the system allocator, which returns
    freed slices to the OS (mimalloc's cache added ~30 MiB to recording's peak), whichever of
    the two is imported first, in a fresh process as the Functions worker starts one."""
    clean = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run(
        [sys.executable, "-c", f"{imports}; print(pa.default_memory_pool().backend_name)"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "system", out
