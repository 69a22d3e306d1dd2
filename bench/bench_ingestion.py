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

Event bodies are built before timing starts; the timed part is exactly the function call:
decode, validate, idempotent bulk insert with the bucket aggregates' upkeep, commit. After each
shape the aggregates are checked against the readings (counts and sums per bucket).
"""

from __future__ import annotations

import argparse
import json
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
    total: int, events_per_batch: int, readings_per_event: int
) -> list[list[func.EventHubEvent]]:
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


def _reset_postgres(url: str) -> None:
    """An empty public schema, so each shape starts from the same empty database."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


def run(engine_url: str, connection_string: str, batches, label: str) -> dict:
    settings = Settings.from_env(
        {"SQL_URL": engine_url, "ScoringStorage": connection_string, "DATA_DIR": tempfile.mkdtemp()}
    )
    ctx = AppContext.create(settings)
    migrate.upgrade(ctx.engine)
    set_context(ctx)
    ingest = user_function("ingest_readings")
    n = sum(len(json.loads(e.get_body())) for b in batches for e in b)
    results = {}
    for phase in ("first delivery", "redelivery"):
        started = time.perf_counter()
        for batch in batches:
            ingest(batch)
        seconds = time.perf_counter() - started
        results[phase] = {
            "readings": n,
            "seconds": round(seconds, 3),
            "readings_per_s": round(n / seconds),
        }
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
            batches = make_batches(args.readings, events, per_event)
            for engine in engines:
                if engine == "sqlite":
                    url = f"sqlite:///{tmp / f'bench-{shape}.db'}"
                else:
                    url = postgres.url()
                    _reset_postgres(url)
                report.setdefault(shape, {})[engine] = run(
                    url, azurite.connection_string, batches, f"{engine} {shape}"
                )
    finally:
        azurite.stop()
        if postgres is not None:
            postgres.stop()
    print(
        f"{'shape':<9}{'engine':<12}{'phase':<16}{'readings':>10}{'seconds':>10}"
        f"{'readings/s':>12}{'ms/call':>9}"
    )
    for shape, engines_report in report.items():
        events = int(shape.split("x")[0])
        per_call = events * int(shape.split("x")[1])
        for engine, phases in engines_report.items():
            for phase, r in phases.items():
                ms = 1000 * r["seconds"] / max(1, r["readings"] / per_call)
                print(
                    f"{shape:<9}{engine:<12}{phase:<16}{r['readings']:>10,}{r['seconds']:>10.2f}"
                    f"{r['readings_per_s']:>12,}{ms:>9.2f}"
                )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
