"""Ingestion benchmark: readings per second through the Event Hubs-triggered function.

JSON event bodies in, rows committed: batches of events from a simulated fleet, delivered to the
function's user function as the host would, on SQLite (file, WAL) and on a real PostgreSQL
server (fsync on), then the same batches delivered again (Event Hubs is at least once: the
redelivery must insert nothing). Three shapes:

* ``100x1`` (the headline): 100 events of one reading each per call, as producers usually send
  and as the host delivers with ``maxEventBatchSize`` 100;
* ``1000x1``: 1000 events of one reading each (``maxEventBatchSize`` 1000);
* ``100x100``: 100 events of 100 readings each (a producer that batches readings itself).

    .venv/bin/python bench/bench_ingestion.py [--readings 200000] [--shapes 100x1,1000x1,100x100]
                                              [--profile] [--partitions 1,2]

``--partitions P`` (one run per value): the events are split into P Event Hubs partitions by
device (the partition key producers set, so a sensor's readings stay in one partition and in
order) and P processes call the function at once, each with its own partition's batches, as the
host runs one invocation per partition at a time. The rate is all readings over the wall time
from the common start to the last process's end. On this machine the processes and the
PostgreSQL server share 2 cores; in Azure the Functions instances and Azure SQL do not.

Event bodies are built before timing starts; the timed part is exactly the function call:
decode, validate, idempotent bulk insert with the bucket aggregates' upkeep, commit. After each
shape the aggregates are checked against the readings (counts and sums per bucket).

``--profile`` adds, per call, what does not depend on how busy the machine is: the CPU time of
this process (decoding, validation, the driver) and of the PostgreSQL server's processes (the
statement, WAL, background writers; read from /proc), and the round trips to the server
(frontend Sync and simple-Query messages in a libpq trace of every pooled connection, over
the first calls of each phase; CPU is measured over the others). On a
shared machine the wall clock stretches with other jobs' load, CPU time far less: readings /
(client + server CPU) is the rate one sequential caller reaches when the machine is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import azure.functions as func  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from shared.context import AppContext, set_context  # noqa: E402
from shared.db import migrate  # noqa: E402
from shared.db.schema import readings  # noqa: E402
from shared.local.azurite import start_azurite  # noqa: E402
from shared.local.host import user_function  # noqa: E402
from shared.local.postgres import start_postgres  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.simulate import FleetSpec, iter_event_bodies, make_fleet  # noqa: E402

SHAPES = "100x1,1000x1,100x100"


def make_batches(
    total: int, events_per_batch: int, readings_per_event: int, partitions: int = 1
) -> list[list[func.EventHubEvent]]:
    """Batches of events as the host delivers them; with ``partitions`` > 1, batches of partition
    ``p`` are ``batches[p::partitions]`` (events keyed by the device of their first reading)."""
    if partitions > 1:
        return _partitioned_batches(total, events_per_batch, readings_per_event, partitions)
    sensors = 1000
    steps = max(1, total // sensors)
    end = datetime(2026, 4, 1, 12)
    fleet = make_fleet(
        FleetSpec(
            start=end - timedelta(seconds=5 * steps),
            end=end,
            devices=100,
            sensors_per_device=10,
            anomaly_share=0,
        )
    )
    batches, batch = [], []
    for seq, body in enumerate(iter_event_bodies(fleet, readings_per_event)):
        batch.append(
            func.EventHubEvent(
                body=body, sequence_number=seq, offset=str(seq), enqueued_time=datetime.now(UTC)
            )
        )
        if len(batch) == events_per_batch:
            batches.append(batch)
            batch = []
    if batch:
        batches.append(batch)
    return batches


def _partitioned_batches(
    total: int, events_per_batch: int, readings_per_event: int, partitions: int
) -> list[list[func.EventHubEvent]]:
    events = [e for batch in make_batches(total, 1, readings_per_event) for e in batch]
    lanes: list[list[func.EventHubEvent]] = [[] for _ in range(partitions)]
    devices: dict[str, int] = {}
    for event in events:
        device = json.loads(event.get_body())[0]["device"]
        lane = lanes[devices.setdefault(device, len(devices)) % partitions]
        seq = len(lane)
        lane.append(
            func.EventHubEvent(
                body=event.get_body(),
                sequence_number=seq,
                offset=str(seq),
                enqueued_time=event.enqueued_time,
            )
        )
    per_lane = [
        [lane[i : i + events_per_batch] for i in range(0, len(lane), events_per_batch)]
        for lane in lanes
    ]
    batches = []
    for i in range(max(len(b) for b in per_lane)):
        for p in range(partitions):
            # Round-robin, so batches[p::partitions] is partition p's (an empty batch pads a
            # shorter partition; the function treats it as a no-op call).
            batches.append(per_lane[p][i] if i < len(per_lane[p]) else [])
    return batches


def _partition_worker(engine_url, connection_string, batches, barrier, queue) -> None:
    """One partition's invocations, one at a time, in a process of its own (see the docstring)."""
    settings = Settings.from_env(
        {"SQL_URL": engine_url, "ScoringStorage": connection_string, "DATA_DIR": tempfile.mkdtemp()}
    )
    ctx = AppContext.create(settings)
    set_context(ctx)
    ingest = user_function("ingest_readings")
    try:
        for _phase in ("first delivery", "redelivery"):
            barrier.wait()
            for batch in batches:
                if batch:
                    ingest(batch)
            barrier.wait()
        queue.put(None)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the run
        queue.put(repr(exc))
        barrier.abort()
    finally:
        ctx.engine.dispose()


def run_partitioned(
    engine_url: str, connection_string: str, batches, label: str, partitions: int
) -> dict:
    """:func:`run` with ``partitions`` processes calling at once (no per-call profile)."""
    import multiprocessing

    settings = Settings.from_env(
        {"SQL_URL": engine_url, "ScoringStorage": connection_string, "DATA_DIR": tempfile.mkdtemp()}
    )
    ctx = AppContext.create(settings)
    migrate.upgrade(ctx.engine)
    ctx.engine.dispose()  # the children open their own connections
    n = sum(len(json.loads(e.get_body())) for b in batches for e in b)
    mp = multiprocessing.get_context("fork")
    barrier = mp.Barrier(partitions + 1)
    queue = mp.Queue()
    workers = [
        mp.Process(
            target=_partition_worker,
            args=(engine_url, connection_string, batches[p::partitions], barrier, queue),
        )
        for p in range(partitions)
    ]
    for worker in workers:
        worker.start()
    results = {}
    try:
        for phase in ("first delivery", "redelivery"):
            barrier.wait(timeout=600)
            started = time.perf_counter()
            barrier.wait(timeout=3600)
            seconds = time.perf_counter() - started
            results[phase] = {
                "readings": n,
                "seconds": round(seconds, 3),
                "readings_per_s": round(n / seconds),
                "partitions": partitions,
            }
    finally:
        for worker in workers:
            worker.join(timeout=60)
    errors = [e for e in (queue.get(timeout=10) for _ in workers) if e]
    assert not errors, f"{label}: {errors}"
    with ctx.engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(readings)).scalar_one()
        counted = conn.execute(sa.text("SELECT SUM(count) FROM bucket_aggregates")).scalar_one()
    ctx.engine.dispose()
    assert stored == n, f"{label}: {stored} rows stored for {n} readings"
    assert counted == n, f"{label}: aggregates count {counted} readings of {n}"
    return results


def _reset_postgres(url: str) -> None:
    """An empty public schema, so each shape starts from the same empty database."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


# Calls of each phase whose round trips are counted: libpq's trace writes every message (the
# arrays too) to a file, which costs client CPU, so it is off while CPU time is measured.
TRACED_CALLS = 10


class CallProfile:
    """CPU seconds of this process and of the PostgreSQL server's processes, and round trips
    (from a libpq trace of the engine's connections); see the module docstring."""

    def __init__(self, engine: sa.Engine, server_pid: int | None, folder: Path) -> None:
        self.server_pid = server_pid
        self.path = folder / f"libpq-{id(engine)}.trace"
        self.trace = open(self.path, "w")  # noqa: SIM115 - closed in trace_off
        self.connections: list = []
        self.tracing = False
        if engine.dialect.name == "postgresql":

            @sa.event.listens_for(engine, "connect")
            def _connected(dbapi_connection, _record) -> None:
                self.connections.append(dbapi_connection)
                if self.tracing:
                    dbapi_connection.pgconn.trace(self.trace.fileno())

    def trace_on(self) -> None:
        self.trace.truncate(0)
        self.trace.seek(0)
        self.tracing = True
        for connection in self.connections:
            if not connection.closed:
                connection.pgconn.trace(self.trace.fileno())

    def round_trips(self) -> int:
        """Stop tracing; the frontend's Sync and simple Query messages since trace_on()."""
        self.tracing = False
        for connection in self.connections:
            if not connection.closed:
                connection.pgconn.untrace()
        self.trace.flush()
        count = 0
        with open(self.path) as lines:
            for line in lines:
                parts = line.split("\t", 4)
                message = parts[3].split(" ", 1)[0].strip() if len(parts) > 3 else ""
                if parts[1:2] == ["F"] and message in ("Sync", "Query"):
                    count += 1
        return count

    def cpu(self) -> tuple[float, float]:
        """(this process's, the PostgreSQL server processes') CPU seconds so far."""
        if self.server_pid is None:
            return time.process_time(), 0.0
        ticks = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # After "(comm)": state, ppid, ..., utime (12th) and stime (13th).
            if int(fields[1]) == self.server_pid or int(entry.name) == self.server_pid:
                ticks += int(fields[11]) + int(fields[12])
        return time.process_time(), ticks / os.sysconf("SC_CLK_TCK")


def run(engine_url: str, connection_string: str, batches, label: str, profile=None) -> dict:
    settings = Settings.from_env(
        {"SQL_URL": engine_url, "ScoringStorage": connection_string, "DATA_DIR": tempfile.mkdtemp()}
    )
    ctx = AppContext.create(settings)
    profiler = CallProfile(ctx.engine, *profile) if profile else None
    migrate.upgrade(ctx.engine)
    set_context(ctx)
    ingest = user_function("ingest_readings")
    n = sum(len(json.loads(e.get_body())) for b in batches for e in b)
    results = {}
    for phase in ("first delivery", "redelivery"):
        traced = min(TRACED_CALLS, len(batches) // 4) if profiler else 0
        if traced:
            profiler.trace_on()
        started = time.perf_counter()
        for i, batch in enumerate(batches):
            if i == traced and profiler:
                trips = profiler.round_trips() if traced else None
                before = profiler.cpu()
            ingest(batch)
        seconds = time.perf_counter() - started
        results[phase] = {
            "readings": n,
            "seconds": round(seconds, 3),
            "readings_per_s": round(n / seconds),
        }
        if profiler:
            client, server = (b - a for a, b in zip(before, profiler.cpu(), strict=True))
            calls = len(batches) - traced
            per_call = n / len(batches)
            results[phase].update(
                client_cpu_ms_per_call=round(1000 * client / calls, 3),
                server_cpu_ms_per_call=round(1000 * server / calls, 3),
                round_trips_per_call=round(trips / traced, 2) if traced else None,
                cpu_bound_readings_per_s=(
                    round(calls * per_call / (client + server)) if client + server else None
                ),
            )
    with ctx.engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(readings)).scalar_one()
        inspector = sa.inspect(conn)
        counted = (
            conn.execute(sa.text("SELECT SUM(count) FROM bucket_aggregates")).scalar_one()
            if inspector.has_table("bucket_aggregates")
            else None
        )
    assert stored == n, f"{label}: {stored} rows stored for {n} readings"
    assert counted in (None, n), f"{label}: aggregates count {counted} readings of {n}"
    ctx.engine.dispose()
    set_context(None)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument(
        "--shapes", default=SHAPES, help="EVENTSxREADINGS per call, comma-separated"
    )
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument(
        "--partitions",
        default="1",
        help="comma-separated Event Hubs partition counts, each run as that many processes",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also report CPU ms per call (client, server) and round trips per call",
    )
    args = parser.parse_args()
    import logging

    logging.getLogger().setLevel(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    azurite = start_azurite(tmp / "azurite")
    engines = args.engines.split(",")
    postgres = start_postgres(durable=True) if "postgresql" in engines else None
    report: dict[str, dict] = {}
    try:
        for shape in args.shapes.split(","):
            events, per_event = (int(x) for x in shape.split("x"))
            for partitions in (int(p) for p in args.partitions.split(",")):
                batches = make_batches(args.readings, events, per_event, partitions)
                key = shape if partitions == 1 else f"{shape}/{partitions}p"
                for engine in engines:
                    if engine == "sqlite":
                        name = "bench-" + key.replace("/", "-") + ".db"
                        url = f"sqlite:///{tmp / name}"
                        server_pid = None
                    else:
                        url = postgres.url()
                        _reset_postgres(url)
                        server_pid = postgres.pid()
                    if partitions > 1:
                        report.setdefault(key, {})[engine] = run_partitioned(
                            url, azurite.connection_string, batches, f"{engine} {key}", partitions
                        )
                        continue
                    report.setdefault(key, {})[engine] = run(
                        url,
                        azurite.connection_string,
                        batches,
                        f"{engine} {key}",
                        (server_pid, tmp) if args.profile else None,
                    )
    finally:
        azurite.stop()
        if postgres is not None:
            postgres.stop()
    print(
        f"{'shape':<9}{'engine':<12}{'phase':<16}{'readings':>10}{'seconds':>10}"
        f"{'readings/s':>12}{'ms/call':>9}"
        + (
            f"{'client CPU':>12}{'server CPU':>12}{'round trips':>12}{'CPU-bound/s':>12}"
            if args.profile
            else ""
        )
    )
    for shape, engines_report in report.items():
        events = int(shape.split("x")[0])
        per_call = events * int(shape.split("/")[0].split("x")[1])
        for engine, phases in engines_report.items():
            for phase, r in phases.items():
                ms = 1000 * r["seconds"] / max(1, r["readings"] / per_call)
                extra = ""
                if "client_cpu_ms_per_call" in r:
                    extra = (
                        f"{r['client_cpu_ms_per_call']:>12.2f}{r['server_cpu_ms_per_call']:>12.2f}"
                        f"{r['round_trips_per_call'] if engine != 'sqlite' else '-':>12}"
                        f"{r['cpu_bound_readings_per_s'] or 0:>12,}"
                    )
                print(
                    f"{shape:<9}{engine:<12}{phase:<16}{r['readings']:>10,}{r['seconds']:>10.2f}"
                    f"{r['readings_per_s']:>12,}{ms:>9.2f}{extra}"
                )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
