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
the rows are written a slice at a time and the checks keep integer codes of the keys: 67 -> 66
and 68 -> 84 MiB. What still grows with the file is its bytes and the keys' codes (~150 bytes
a row at 1.44 M rows, see bench/bench_recording.py).
"""

from __future__ import annotations

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
