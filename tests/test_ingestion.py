"""Ingestion through the Event Hubs-triggered function, on SQLite and PostgreSQL, with Azurite.

The Functions host and the Event Hubs endpoint cannot exist here: the trigger's user function is
invoked directly with real ``azure.functions.EventHubEvent`` lists, as the host would call it.
"""

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from shared.context import AppContext, set_context
from shared.db.engine import engine_for_url
from shared.db.schema import dead_letters, readings
from shared.ingestion.validation import InvalidReading, validate_reading
from shared.local.azurite import free_port
from tests.helpers import event, user_function

T0 = datetime(2026, 5, 1, 12, 0, 0)


def reading(i: int, device="dev-1", sensor="s-1", value=None):
    return {
        "device": device,
        "sensor": sensor,
        "ts": (T0 + timedelta(seconds=5 * i)).isoformat() + "Z",
        "value": float(i) if value is None else value,
    }


def count_readings(ctx) -> int:
    with ctx.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(readings)).scalar_one()


def deadletter_lines(ctx) -> list[dict]:
    store, container = ctx.store, ctx.settings.deadletter_container
    lines = []
    for name in store.list(container):
        lines += [json.loads(x) for x in store.download(container, name).decode().splitlines()]
    return lines


def test_good_batch_lands_and_redelivery_changes_nothing(ctx):
    ingest = user_function("ingest_readings")
    batch = [
        event([reading(i, sensor=f"s-{k}") for i in range(50)], seq)
        for seq, k in enumerate(range(4))
    ]
    ingest(batch)
    assert count_readings(ctx) == 200
    with ctx.engine.connect() as conn:
        row = conn.execute(
            sa.select(readings).where(
                readings.c.sensor == "s-2", readings.c.ts == T0 + timedelta(seconds=15)
            )
        ).one()
    assert row.value == 3.0 and row.device == "dev-1"

    ingest(batch)  # Event Hubs is at least once: the same batch again
    assert count_readings(ctx) == 200
    assert deadletter_lines(ctx) == []


def test_single_object_body_is_one_reading(ctx):
    user_function("ingest_readings")([event(reading(1), 7)])
    assert count_readings(ctx) == 1


def test_mixed_batch_lands_good_and_deadletters_each_bad_with_reason(ctx):
    bad_items = [
        {"device": "", "sensor": "s", "ts": "2026-05-01T12:00:00Z", "value": 1},
        {"device": "dev/../x", "sensor": "s", "ts": "2026-05-01T12:00:00Z", "value": 1},
        {"device": "d", "sensor": "s", "ts": "yesterday", "value": 1},
        {"device": "d", "sensor": "s", "ts": "2026-05-01T12:00:00Z", "value": "12"},
        {"device": "d", "sensor": "s", "ts": "2026-05-01T12:00:00Z", "value": True},
        {"device": "d", "sensor": "s", "ts": "1970-01-01T00:00:00Z", "value": 1},
        {"device": "d", "sensor": "x" * 65, "ts": "2026-05-01T12:00:00Z", "value": 1},
        {"device": "d", "ts": "2026-05-01T12:00:00Z", "value": 1},
    ]
    events = [
        event([reading(i) for i in range(10)] + bad_items[:4], 100),
        event(b"\xff\xfe not json", 101),
        event(bad_items[4:] + [reading(20)], 102),
    ]
    user_function("ingest_readings")(events)
    assert count_readings(ctx) == 11
    lines = deadletter_lines(ctx)
    assert len(lines) == len(bad_items) + 1
    reasons = [line["reason"] for line in lines]
    assert any("device is empty" in r for r in reasons)
    assert any("characters outside" in r for r in reasons)
    assert any("not an ISO-8601" in r for r in reasons)
    assert any("value must be a number, got str" in r for r in reasons)
    assert any("value must be a number, got bool" in r for r in reasons)
    assert any("before 2000" in r for r in reasons)
    assert any("longer than 64" in r for r in reasons)
    assert any("missing field(s): sensor" in r for r in reasons)
    undecodable = [line for line in lines if "undecodable" in line["reason"]]
    assert len(undecodable) == 1
    assert undecodable[0]["sequence_number"] == 101
    assert "body_base64" in undecodable[0]
    assert all(line["enqueued_time"].startswith("2026-01-01") for line in lines)
    # Pointer rows (one per event with rejects) make the dead letters queryable; a redelivery
    # overwrites, never adds.
    user_function("ingest_readings")(events)
    assert len(deadletter_lines(ctx)) == len(bad_items) + 1
    with ctx.engine.connect() as conn:
        pointers = conn.execute(sa.select(dead_letters)).all()
    assert len(pointers) == len(events)
    assert sum(p.n_items for p in pointers) == len(bad_items) + 1


def test_conflicting_value_is_counted_not_overwritten(ctx, caplog):
    from shared.ingestion import ingest_events

    first = ingest_events(
        [event([reading(1, value=5.0), reading(2)], 1)],
        ctx.engine,
        ctx.store,
        ctx.settings.deadletter_container,
    )
    assert first.counts.inserted == 2
    again = ingest_events(
        [event([reading(1, value=6.0), reading(2), reading(3)], 2)],
        ctx.engine,
        ctx.store,
        ctx.settings.deadletter_container,
    )
    assert (again.counts.inserted, again.counts.duplicates, again.counts.conflicts) == (1, 2, 1)
    with ctx.engine.connect() as conn:
        value = conn.execute(
            sa.select(readings.c.value).where(readings.c.ts == T0 + timedelta(seconds=5))
        ).scalar_one()
    assert value == 5.0
    assert any("different value" in r.getMessage() for r in caplog.records)


def test_sql_down_raises_and_deadletters_nothing(settings, azurite, tmp_path):
    """SQL unreachable: a PostgreSQL URL on a closed port. The function must raise (so the host
    retries the batch) and write no dead letters for valid readings."""
    from shared.blobs import BlobStore

    down = engine_for_url(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none?connect_timeout=2"
    )
    context = AppContext(settings, down, BlobStore.from_settings(settings))
    set_context(context)
    try:
        with pytest.raises(sa.exc.OperationalError):
            user_function("ingest_readings")([event([reading(1), {"bad": 1}], 5)])
    finally:
        set_context(None)
    assert context.store.list(settings.deadletter_container) == []


def test_validation_accepts_offsets_and_naive_as_utc():
    now = datetime(2026, 6, 1)
    r = validate_reading(
        {"device": "d", "sensor": "s", "ts": "2026-05-01T14:00:00+02:00", "value": 3}, now
    )
    assert r.ts == datetime(2026, 5, 1, 12, 0, 0) and r.value == 3.0
    naive = validate_reading(
        {"device": "d", "sensor": "s", "ts": "2026-05-01 12:00:00", "value": 1.5}, now
    )
    assert naive.ts == datetime(2026, 5, 1, 12, 0, 0)
    with pytest.raises(InvalidReading, match="future"):
        validate_reading(
            {"device": "d", "sensor": "s", "ts": "2026-06-03T00:00:00Z", "value": 1}, now
        )
    with pytest.raises(InvalidReading, match="finite"):
        validate_reading(
            {"device": "d", "sensor": "s", "ts": "2026-05-01T00:00:00Z", "value": float("inf")}, now
        )


def test_function_indexing_bindings():
    from tests.helpers import functions_by_name

    f = functions_by_name()["ingest_readings"]
    (binding,) = [b for b in f.get_dict_repr()["bindings"]]
    assert binding["type"] == "eventHubTrigger"
    assert binding["eventHubName"] == "%EVENTHUB_NAME%"
    assert binding["consumerGroup"] == "%EVENTHUB_CONSUMER_GROUP%"
    assert binding["connection"] == "EventHubConnection"
    assert str(binding["cardinality"].value).lower() == "many"
    retry = f.get_settings_dict("retry_policy")
    assert retry["strategy"] == "exponential_backoff" and int(retry["max_retry_count"]) >= 3


def test_now_is_utc_for_future_bound():
    # The future bound is computed from UTC now, not local time.
    soon = (datetime.now(UTC) + timedelta(hours=12)).replace(tzinfo=None).isoformat()
    validate_reading({"device": "d", "sensor": "s", "ts": soon, "value": 1})
