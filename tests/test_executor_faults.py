"""Killed scoring workers and a killed CLI, on SQLite + Azurite and PostgreSQL + Azurite (issue
11, items 4 and 14): a dead worker fails its chunks and the run ends (it never hangs, no chunk
stays ``written``), no process outlives the run that started it, and a re-run of the window
supersedes the failed one for every read of per-bucket predictions (events, an event's buckets
through the HTTP API).

Workers are found and killed with SIGKILL through /proc, as an out-of-memory kill would.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import azure.functions as func
import pytest
import sqlalchemy as sa

from shared.db.schema import predictions, run_chunks
from shared.events import events_for
from shared.local.host import deliver_predictions, user_function
from shared.runs import records
from shared.runs.service import start_run
from tests import scenario

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(pid: int) -> dict[int, int]:
    """Live descendants of ``pid`` with their depth (1: children)."""
    tree, found, frontier, depth = children_of(), {}, [pid], 0
    while frontier:
        depth += 1
        frontier = [c for p in frontier for c in tree.get(p, [])]
        found.update({c: depth for c in frontier})
    return found


def kill_first_worker(stop: threading.Event, killed: list[int]) -> None:
    """Kill the first pool worker (a grandchild: the fork server's child) that appears."""
    me = os.getpid()
    while not stop.is_set():
        workers = [p for p, d in descendants(me).items() if d == 2]
        if workers:
            os.kill(workers[0], signal.SIGKILL)
            killed.append(workers[0])
            return
        time.sleep(0.002)


@pytest.fixture
def fleet(ctx):
    sc = scenario.build(ctx, devices=2, sensors=3)
    ctx.settings = dataclasses.replace(ctx.settings, sensors_per_chunk=1, local_workers=2)
    return ctx, sc


def chunk_states(ctx, run_id) -> dict[str, str]:
    with ctx.engine.connect() as conn:
        return dict(
            conn.execute(
                sa.select(run_chunks.c.chunk_id, run_chunks.c.status).where(
                    run_chunks.c.run_id == run_id
                )
            ).all()
        )


def test_a_killed_worker_ends_the_run_and_a_rerun_supersedes_it_for_reads(fleet):
    ctx, sc = fleet
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=kill_first_worker, args=(stop, killed), daemon=True)
    watcher.start()
    outcome: list = []
    runner = threading.Thread(
        target=lambda: outcome.append(start_run(ctx, sc.window, "cli")), daemon=True
    )
    runner.start()
    runner.join(180)
    stop.set()
    assert not runner.is_alive(), "the run hung after a worker was killed"
    assert killed, "no worker was seen"
    ((run, _),) = outcome
    # No worker is left behind (the fork server may stay for the next pool).
    deadline = time.monotonic() + 10
    while any(d >= 2 for d in descendants(os.getpid()).values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(d >= 2 for d in descendants(os.getpid()).values()), "a worker outlived its run"

    deliver_predictions(ctx, run.run_id)
    run = records.get_run(ctx.engine, run.run_id)
    states = chunk_states(ctx, run.run_id)
    assert records.CHUNK_WRITTEN not in states.values(), states
    assert records.CHUNK_FAILED in states.values(), states
    assert run.status in (records.FAILED, records.PARTIAL), run.status
    assert "BrokenProcessPool" in run.error or "chunk(s)" in run.error, run.error
    with ctx.engine.connect() as conn:
        stored = conn.execute(
            sa.select(sa.func.count()).where(predictions.c.run_id == run.run_id)
        ).scalar_one()
    assert stored == run.n_predictions

    # The operator re-runs the window: the re-run decides every bucket both scored.
    rerun, created = start_run(ctx, sc.window, "cli", rerun=True)
    assert created
    deliver_predictions(ctx, rerun.run_id)
    rerun = records.get_run(ctx.engine, rerun.run_id)
    assert rerun.status == records.COMPLETED, rerun.error
    events = events_for(ctx.engine)
    assert events, "the scenario's anomalies make events"
    assert len({(e.device, e.sensor, e.start) for e in events}) == len(events)
    for event in events:
        req = func.HttpRequest(
            "GET",
            f"http://localhost/api/anomalies/{event.event_id}",
            body=b"",
            route_params={"event_id": event.event_id},
        )
        response = user_function("get_anomaly")(req)
        assert response.status_code == 200
        buckets = json.loads(response.get_body())["buckets"]
        starts = [b["bucket_start"] for b in buckets]
        assert len(starts) == len(set(starts)), "a bucket is listed twice"
        assert {b["run_id"] for b in buckets} == {rerun.run_id}
        assert event.last_run_id == rerun.run_id


def test_no_process_outlives_a_killed_cli(fleet, env):
    """``shared.cli run`` killed while it scores: its fork server and workers go with it."""
    ctx, sc = fleet
    cli_env = {
        **os.environ,
        **env,
        "SENSORS_PER_CHUNK": "1",
        "LOCAL_WORKERS": "2",
        "PYTHONPATH": str(ROOT),
    }
    cli = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "run", "--at", sc.window.end.isoformat()],
        cwd=ROOT,
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    family: dict[int, int] = {}
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and cli.poll() is None:
            family = descendants(cli.pid)
            if any(d >= 2 for d in family.values()):
                break
            time.sleep(0.002)
        assert any(d >= 2 for d in family.values()), "no worker seen before the CLI ended"
        cli.send_signal(signal.SIGKILL)
        cli.wait(10)
        deadline = time.monotonic() + 15
        alive = list(family)
        while alive and time.monotonic() < deadline:
            alive = [p for p in family if Path(f"/proc/{p}").exists() and _alive(p)]
            time.sleep(0.1)
        assert not alive, f"processes outlived the killed CLI: {alive}"
    finally:
        if cli.poll() is None:
            cli.kill()
        for pid in family:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
