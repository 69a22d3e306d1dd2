"""Bucket aggregates kept as readings arrive, on SQLite and PostgreSQL (statements also compiled
for SQL Server by the conftest hook, and the SQL Server-only ones compiled here).

The aggregates must equal a fresh grouping of the readings after redelivery, late readings,
in-batch duplicates and conflicting values; features read from them must equal the raw
aggregation the app used before (``features_from_readings`` below is that query); migration 0004
must backfill existing readings; a changed BUCKET_SECONDS is refused until rebuilt. The Event Hubs
endpoint cannot exist here: events are ``azure.functions.EventHubEvent`` objects handed to the
ingestion service as the trigger would.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from shared import aggregates
from shared.db import migrate
from shared.db.dialects import bucket_start_of, mssql_dialect
from shared.db.engine import engine_for_url
from shared.db.schema import aggregate_widths, bucket_aggregates, readings
from shared.features import (
    _from_readings,
    aggregate_features,
    features_query,
    features_table,
)
from shared.ingestion import ingest_events
from shared.ingestion.store import insert_readings
from shared.ingestion.validation import Reading
from tests.helpers import event

T0 = datetime(2026, 5, 1, 12, 0, 0)


def body(rows) -> bytes:
    import json

    return json.dumps(
        [{"device": d, "sensor": s, "ts": ts.isoformat() + "Z", "value": v} for ts, d, s, v in rows]
    ).encode()


def features_from_readings(conn, start, end, bucket_seconds, devices=None, sensors=None):
    """The raw aggregation as the app ran it before aggregates (one GROUP BY over readings)."""
    query = _from_readings(start, end, bucket_seconds, devices, sensors)
    query = query.order_by(*(query.selected_columns[c] for c in ("device", "sensor", "bucket")))
    return features_table(conn.execute(query).all(), bucket_seconds)


def assert_same_features(a, b) -> None:
    assert a.column_names == b.column_names
    for name in ("device", "sensor", "bucket_start", "count", "min", "max"):
        assert a.column(name).to_pylist() == b.column(name).to_pylist(), name
    for name in ("mean", "std"):
        # Sums accumulated batch by batch add in another order than one GROUP BY: last-ulp only.
        np.testing.assert_allclose(
            a.column(name).to_numpy(), b.column(name).to_numpy(), rtol=1e-12, atol=1e-9
        )


def fleet_rows(seed: int, n: int) -> list[tuple]:
    """Readings of 3 devices x 2 sensors over 10 minutes with sub-second timestamps."""
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        ts = T0 + timedelta(seconds=rnd.randrange(0, 600), microseconds=rnd.randrange(0, 10**6))
        rows.append((ts, f"dev-{rnd.randrange(3)}", f"s-{rnd.randrange(2)}", rnd.gauss(20, 5)))
    # Bucket edges exactly, and just before them.
    rows += [
        (T0 + timedelta(minutes=3), "dev-0", "s-0", 1.5),
        (T0 + timedelta(minutes=3, microseconds=-1), "dev-0", "s-0", 2.5),
    ]
    return rows


def test_aggregates_exact_under_redelivery_late_and_duplicate_readings(ctx):
    rows = fleet_rows(1, 1500)
    late = rows[:300]  # delivered again at the end, and some of them only now
    first, second = rows[300:900], rows[900:]
    container = ctx.settings.deadletter_container
    seq = iter(range(10**6))

    def deliver(batch_rows, per_event=1):
        events = [
            event(body(batch_rows[i : i + per_event]), next(seq))
            for i in range(0, len(batch_rows), per_event)
        ]
        return ingest_events(events, ctx.engine, ctx.store, container, "0")

    assert deliver(first).counts.inserted == len(first)
    assert deliver(second, per_event=50).counts.inserted == len(second)
    # Redelivery of everything so far: nothing inserted, nothing counted.
    assert deliver(first + second).counts.inserted == 0
    # Late readings for buckets long closed, with in-batch duplicates and redelivered ones.
    result = deliver(late + late[:50] + first[:20], per_event=7)
    assert result.counts.inserted == len(late)
    # A conflicting duplicate (same key, other value) is dead-lettered, not counted.
    ts, d, s, v = first[0]
    assert deliver([(ts, d, s, v + 1.0)]).counts.conflicts == 1

    with ctx.engine.connect() as conn:
        assert aggregates.compare_with_readings(conn, 60) == []
        total = conn.execute(sa.select(sa.func.sum(bucket_aggregates.c["count"]))).scalar_one()
        assert total == len({(r[0], r[1], r[2]) for r in rows})
        for start, end in [
            (T0, T0 + timedelta(minutes=10)),  # aligned: aggregates only
            (T0 + timedelta(seconds=17, microseconds=250), T0 + timedelta(minutes=7, seconds=3)),
            (T0 + timedelta(seconds=61), T0 + timedelta(seconds=119)),  # inside one bucket
            (T0 - timedelta(hours=1), T0 + timedelta(hours=1)),
        ]:
            assert_same_features(
                aggregate_features(conn, start, end, 60),
                features_from_readings(conn, start, end, 60),
            )
        sensors = [("dev-1", "s-0"), ("dev-2", "s-1")]
        assert_same_features(
            aggregate_features(conn, T0, T0 + timedelta(minutes=9, seconds=30), 60, None, sensors),
            features_from_readings(
                conn, T0, T0 + timedelta(minutes=9, seconds=30), 60, None, sensors
            ),
        )
        assert_same_features(
            aggregate_features(conn, T0, T0 + timedelta(minutes=10), 60, ["dev-0"]),
            features_from_readings(conn, T0, T0 + timedelta(minutes=10), 60, ["dev-0"]),
        )


def test_aggregates_feed_from_csv_sized_batches_and_concurrent_redelivery(ctx):
    """insert_readings directly (the CSV import's path), in large batches, twice."""
    rows = [Reading(*r) for r in fleet_rows(2, 5000)]
    unique = {(r.ts, r.device, r.sensor) for r in rows}
    assert insert_readings(ctx.engine, rows).inserted == len(unique)
    assert insert_readings(ctx.engine, rows[::-1]).inserted == 0
    with ctx.engine.connect() as conn:
        assert aggregates.compare_with_readings(conn, 60) == []


def test_a_changed_bucket_width_is_refused_until_rebuilt(ctx):
    rows = [Reading(*r) for r in fleet_rows(3, 400)]
    insert_readings(ctx.engine, rows)
    window = (T0, T0 + timedelta(minutes=10))
    with (
        ctx.engine.connect() as conn,
        pytest.raises(aggregates.AggregatesNotBuilt, match="aggregates rebuild"),
    ):
        aggregate_features(conn, *window, 300)
    with ctx.engine.begin() as conn:
        written = aggregates.rebuild(conn, 300)
    assert written == 2 * 3 * 2  # two 5-minute buckets x 3 devices x 2 sensors
    # Both widths are maintained from now on.
    more = [Reading(*r) for r in fleet_rows(4, 200)]
    insert_readings(ctx.engine, more)
    with ctx.engine.connect() as conn:
        assert aggregates.widths(conn) == [60, 300]
        for w in (60, 300):
            assert aggregates.compare_with_readings(conn, w) == []
            assert_same_features(
                aggregate_features(conn, *window, w), features_from_readings(conn, *window, w)
            )
    # Rebuilding a range repairs only that range (e.g. after a writer that skipped aggregates).
    with ctx.engine.begin() as conn:
        conn.execute(sa.delete(bucket_aggregates).where(bucket_aggregates.c.bucket_seconds == 60))
        aggregates.rebuild(conn, 60, T0 + timedelta(seconds=30), T0 + timedelta(minutes=20))
    with ctx.engine.connect() as conn:
        assert aggregates.compare_with_readings(conn, 60) == []
    with ctx.engine.begin() as conn:
        aggregates.drop_width(conn, 300)
    with ctx.engine.connect() as conn:
        assert aggregates.widths(conn) == [60]


def test_migration_backfills_existing_readings(sql_url):
    engine = engine_for_url(sql_url)
    migrate.upgrade(engine, "0003")
    rows = fleet_rows(5, 800)
    with engine.begin() as conn:
        conn.execute(
            readings.insert(),
            [
                {"ts": t, "device": d, "sensor": s, "value": v}
                for t, d, s, v in {r[:3]: r for r in rows}.values()
            ],
        )
    migrate.upgrade(engine, "0004", bucket_seconds=120)
    with engine.connect() as conn:
        assert aggregates.widths(conn) == [120]
        assert aggregates.compare_with_readings(conn, 120) == []
        window = (T0 - timedelta(minutes=1), T0 + timedelta(minutes=11))
        assert_same_features(
            aggregate_features(conn, *window, 120), features_from_readings(conn, *window, 120)
        )
    from alembic import command

    command.downgrade(migrate.alembic_config(engine), "0003")
    with engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names())
    assert "bucket_aggregates" not in names and "aggregate_widths" not in names
    engine.dispose()


def test_bucket_start_agrees_with_python_on_each_engine(sql_url):
    engine = engine_for_url(sql_url)
    migrate.upgrade(engine)
    stamps = [
        datetime(2026, 3, 1, 10, 0, 59, 999999),
        datetime(2026, 3, 1, 10, 1, 0),
        datetime(2038, 1, 19, 3, 14, 8, 500000),  # past 2**31 seconds
        datetime(2000, 1, 1),
    ]
    with engine.begin() as conn:
        conn.execute(
            readings.insert(),
            [{"ts": t, "device": "d", "sensor": "s", "value": 1.0} for t in stamps],
        )
        for w in (1, 7, 60, 3600, 86400):
            got = conn.execute(
                sa.select(readings.c.ts, bucket_start_of(readings.c.ts, w)).order_by(readings.c.ts)
            ).all()
            assert got == [(t, aggregates.bucket_floor(t, w)) for t in sorted(stamps)], w
            # And the stored form equals a bound parameter's (SQLite compares text).
            found = conn.execute(
                sa.select(sa.func.count()).where(
                    bucket_start_of(readings.c.ts, w) == aggregates.bucket_floor(stamps[0], w)
                )
            ).scalar_one()
            assert found >= 1
    engine.dispose()


def test_sql_server_statements_compile():
    dialect = mssql_dialect()
    merge = str(aggregates.accumulate_statement("mssql").compile(dialect=dialect))
    assert merge.startswith("MERGE bucket_aggregates WITH (HOLDLOCK)")
    start = str(bucket_start_of(readings.c.ts, 60).compile(dialect=dialect))
    assert "DATEADD(day, CAST(" in start and "DATETIME2(6)" in start
    aligned = str(features_query(T0, T0 + timedelta(hours=1), 60).compile(dialect=dialect))
    assert "FROM bucket_aggregates" in aligned and "FROM readings" not in aligned
    cut = str(
        features_query(T0 + timedelta(seconds=5), T0 + timedelta(hours=1), 60).compile(
            dialect=dialect
        )
    )
    assert "UNION ALL" in cut and "FROM readings" in cut
    select_rebuild = aggregates.aggregate_select(
        sa.select(readings).subquery("r"), aggregates._literal_width(60)
    )
    assert "GROUP BY" in str(select_rebuild.compile(dialect=dialect))
    script = migrate.offline_sql("mssql+pyodbc://", bucket_seconds=60)
    assert "CREATE TABLE bucket_aggregates" in script
    assert "bucket_start DATETIME2(6) NOT NULL" in script
    assert "INSERT INTO bucket_aggregates" in script
    assert (
        "INSERT INTO aggregate_widths (bucket_seconds, built_at) VALUES (60, SYSUTCDATETIME())"
        in script
    )


def test_widths_table_is_in_the_schema():
    assert aggregate_widths.c.bucket_seconds.primary_key
    assert [c.name for c in bucket_aggregates.primary_key.columns] == list(aggregates.KEY)


def test_bucket_aggregates_leave_room_for_in_place_updates(postgres_server):
    """PostgreSQL: migration 0009 gives bucket_aggregates pages free space (fillfactor 70), so
    the repeated updates of a bucket's row stay on its page (HOT) instead of bloating the table
    and its index."""
    from tests.conftest import fresh_postgres_url

    engine = engine_for_url(fresh_postgres_url(postgres_server))
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            options = conn.execute(
                sa.text("SELECT reloptions FROM pg_class WHERE relname = 'bucket_aggregates'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert options == ["fillfactor=70"]
