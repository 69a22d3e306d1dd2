"""Ingestion benchmark: readings per second through the Event Hubs-triggered function.

JSON event bodies in, rows committed: batches of 100 events x 100 readings (10,000 readings per
function call) from a simulated fleet, delivered to the function's user function as the host
would, on SQLite (file, WAL) and on a real PostgreSQL server (fsync on), then the same batches
delivered again (Event Hubs is at least once: the redelivery must insert nothing).

    .venv/bin/python bench/bench_ingestion.py [--readings 500000]

Event bodies are built before timing starts; the timed part is exactly the function call:
decode, validate, idempotent bulk insert, commit.
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

EVENTS_PER_BATCH = 100
READINGS_PER_EVENT = 100


def make_batches(total: int) -> list[list[func.EventHubEvent]]:
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
    for seq, body in enumerate(iter_event_bodies(fleet, READINGS_PER_EVENT)):
        batch.append(
            func.EventHubEvent(
                body=body, sequence_number=seq, offset=str(seq), enqueued_time=datetime.now(UTC)
            )
        )
        if len(batch) == EVENTS_PER_BATCH:
            batches.append(batch)
            batch = []
    if batch:
        batches.append(batch)
    return batches


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
    assert stored == n, f"{label}: {stored} rows stored for {n} readings"
    ctx.engine.dispose()
    set_context(None)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=500_000)
    args = parser.parse_args()
    import logging

    logging.getLogger().setLevel(logging.WARNING)
    batches = make_batches(args.readings)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    azurite = start_azurite(tmp / "azurite")
    postgres = start_postgres(durable=True)
    try:
        report = {
            "sqlite": run(
                f"sqlite:///{tmp / 'bench.db'}", azurite.connection_string, batches, "sqlite"
            ),
            "postgresql": run(postgres.url(), azurite.connection_string, batches, "postgresql"),
        }
    finally:
        azurite.stop()
        postgres.stop()
    print(f"{'engine':<12}{'phase':<16}{'readings':>10}{'seconds':>10}{'readings/s':>12}")
    for engine, phases in report.items():
        for phase, r in phases.items():
            print(
                f"{engine:<12}{phase:<16}{r['readings']:>10,}{r['seconds']:>10.2f}"
                f"{r['readings_per_s']:>12,}"
            )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
