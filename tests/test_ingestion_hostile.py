"""Hostile event bodies through the Event Hubs-triggered function, on SQLite and PostgreSQL with
Azurite: one poison item never costs the batch, dead letters are never lost, duplicated or
overwritten by another partition's, and a conflicting value is kept where an operator sees it.

The Functions host and the Event Hubs endpoint cannot exist here: the trigger's user function is
invoked directly with real ``azure.functions.EventHubEvent`` lists, as the host would call it.
"""

from __future__ import annotations

import json
from datetime import timedelta

import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared.db.schema import dead_letters, readings
from shared.ingestion import ingest_events
from shared.ingestion.validation import InvalidReading, Reading, validate_reading
from tests.helpers import event, user_function
from tests.test_ingestion import T0, count_readings, deadletter_lines, reading

BIG_INT = int("1" + "0" * 399)  # a 400-digit integer: float() of it overflows

# (description, item or raw body, what the dead-letter reason must say)
POISON_ITEMS = [
    ("400-digit integer value", {**reading(90), "value": BIG_INT}, "value is too large"),
    ("ts before year 1 in UTC", {**reading(91), "ts": "0001-01-01T00:00:00+01:00"}, "ts"),
    ("ts after year 9999 in UTC", {**reading(92), "ts": "9999-12-31T23:59:59-01:00"}, "ts"),
    ("list as device", {**reading(93), "device": ["dev-1"]}, "device must be a string, got list"),
    ("dict as sensor", {**reading(94), "sensor": {"a": 1}}, "sensor must be a string, got dict"),
    ("list as ts", {**reading(95), "ts": [1]}, "ts must be an ISO-8601 string, got list"),
    ("huge int as device", {**reading(96), "device": BIG_INT}, "device must be a string, got int"),
    ("NUL in sensor", {**reading(97), "sensor": "s\x00"}, "characters outside"),
    ("NaN value", {**reading(98), "value": float("nan")}, "value is not finite"),
]
POISON_BODIES = [
    ("100,000 '['", b"[" * 100_000, "undecodable event body"),
    ("5,000-digit number", b'{"value": ' + b"9" * 5000 + b"}", "undecodable event body"),
    ("deep nesting inside a valid object", b'{"device": ' + b"[" * 5000 + b"]" * 5000 + b"}", ""),
    ("empty body", b"", "undecodable event body"),
    ("lone surrogate", b'{"device": "\\ud800", "sensor": "s", "ts": "x", "value": 1}', ""),
]


def test_poison_items_and_bodies_dead_letter_alone_and_the_rest_is_stored(ctx):
    """Each hostile item sits in an event with 5 valid readings; each hostile body is its own
    event. Nothing escapes the function; every valid reading is stored; each hostile item or
    body is one dead-letter line with its reason."""
    events = []
    for n, (_, item, _) in enumerate(POISON_ITEMS):
        valid = [reading(10 * n + i, sensor=f"s-{n}") for i in range(5)]
        raw = json.dumps(valid[:2] + [item] + valid[2:]).encode()
        events.append(event(raw, 1000 + n))
    for n, (_, body, _) in enumerate(POISON_BODIES):
        events.append(event(body, 2000 + n))
    user_function("ingest_readings")(events)  # must not raise

    assert count_readings(ctx) == 5 * len(POISON_ITEMS)
    lines = deadletter_lines(ctx)
    assert len(lines) == len(POISON_ITEMS) + len(POISON_BODIES)
    by_seq = {line["sequence_number"]: line for line in lines}
    for n, (what, _, reason) in enumerate(POISON_ITEMS):
        line = by_seq[1000 + n]
        assert reason in line["reason"], (what, line["reason"])
        assert line["item_index"] == 2
    for n, (what, _, reason) in enumerate(POISON_BODIES):
        assert reason in by_seq[2000 + n]["reason"], (what, by_seq[2000 + n]["reason"])
    # The pointer rows count exactly the lines.
    with ctx.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.sum(dead_letters.c.n_items))).scalar_one() == len(
            lines
        )

    # Redelivered (at least once), nothing changes.
    user_function("ingest_readings")(events)
    assert count_readings(ctx) == 5 * len(POISON_ITEMS)
    assert len(deadletter_lines(ctx)) == len(lines)


def test_same_sequence_range_on_two_partitions_keeps_both_rejects(ctx):
    """Without partition metadata, two partitions' batches with the same sequence numbers must
    not overwrite each other's dead letters (3 rejects stay 3 lines, and the rows say 3)."""
    container = ctx.settings.deadletter_container
    first = [event([reading(1), {"device": "a"}], 10), event([{"bad": 1}], 11)]
    second = [event([reading(2), {"device": "b"}], 10), event([reading(3)], 11)]
    ingest_events(first, ctx.engine, ctx.store, container, None)
    ingest_events(second, ctx.engine, ctx.store, container, None)
    lines = deadletter_lines(ctx)
    assert len(lines) == 3
    assert sorted(str(line["body"]) for line in lines) == sorted(
        [str({"device": "a"}), str({"bad": 1}), str({"device": "b"})]
    )
    with ctx.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.sum(dead_letters.c.n_items))).scalar_one() == 3
    # With partition ids, the same holds.
    ingest_events(first, ctx.engine, ctx.store, container, "0")
    ingest_events(second, ctx.engine, ctx.store, container, "1")
    assert count_readings(ctx) == 3


def test_rebatched_redelivery_does_not_count_a_reject_twice(ctx):
    """The host redelivers from the last checkpoint, but not necessarily with the same batch
    boundaries: a rejected item seen in two batches is one dead letter."""
    container = ctx.settings.deadletter_container
    events = [event([reading(i), {"device": f"bad-{i}"}], 100 + i) for i in range(4)]
    ingest_events(events[:3], ctx.engine, ctx.store, container, "0")
    ingest_events(events[1:], ctx.engine, ctx.store, container, "0")
    lines = deadletter_lines(ctx)
    assert sorted(line["body"]["device"] for line in lines) == [f"bad-{i}" for i in range(4)]
    with ctx.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.sum(dead_letters.c.n_items))).scalar_one() == 4
    assert count_readings(ctx) == 4


def test_conflicting_value_is_kept_in_a_dead_letter(ctx):
    """A reading whose key exists with another value is not stored (first value wins), but its
    value is kept: a dead letter with reason "conflict" holds it beside the stored one. Within a
    batch too. Redelivery keeps one line each."""
    container = ctx.settings.deadletter_container
    ingest_events([event([reading(1, value=5.0)], 1)], ctx.engine, ctx.store, container, "0")
    batch = [
        event([reading(1, value=6.0), reading(2, value=7.0)], 2),
        event([reading(2, value=8.0), reading(2, value=7.0)], 3),
    ]
    result = ingest_events(batch, ctx.engine, ctx.store, container, "0")
    assert result.counts.conflicts == 2
    ingest_events(batch, ctx.engine, ctx.store, container, "0")
    conflicts = [line for line in deadletter_lines(ctx) if line["reason"].startswith("conflict")]
    assert len(conflicts) == 2
    by_value = {line["body"]["value"]: line for line in conflicts}
    assert set(by_value) == {6.0, 8.0}
    assert by_value[6.0]["stored_value"] == 5.0 and by_value[6.0]["sequence_number"] == 2
    assert by_value[8.0]["stored_value"] == 7.0 and by_value[8.0]["sequence_number"] == 3
    with ctx.engine.connect() as conn:
        stored = dict(
            conn.execute(sa.select(readings.c.ts, readings.c.value).order_by(readings.c.ts)).all()
        )
    assert stored == {T0 + timedelta(seconds=5): 5.0, T0 + timedelta(seconds=10): 7.0}


# -- property-based: the decoder and the validator never raise anything but a rejection --------

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**500), max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.sampled_from(
        [
            "2026-05-01T12:00:00Z",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00+23:59",
            "2026-05-01T12:00:00+25:00",
            "dev-1",
            "x" * 65,
        ]
    ),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
_field = st.one_of(_json, _json_leaf)
_reading_like = st.fixed_dictionaries(
    {},
    optional={"device": _field, "sensor": _field, "ts": _field, "value": _field, "x": _field},
)


def _check_event(raw: bytes) -> None:
    from shared.ingestion.service import parse_event

    valid, rejects = parse_event(raw, T0 + timedelta(days=30))
    assert all(isinstance(r, Reading) for r in valid)
    for reject in rejects:
        assert reject.reason
        json.dumps(reject.entry(), ensure_ascii=False, default=str)  # the dead letter serialises


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_reading_like | _json, max_size=5) | _reading_like | _json)
def test_property_decoder_and_validator_on_any_json(body):
    """Any JSON document as an event body: readings or rejections with a reason, never an
    exception."""
    _check_event(json.dumps(body, allow_nan=True).encode())
    items = body if isinstance(body, list) else [body]
    for item in items:
        try:
            validate_reading(item, T0)
        except InvalidReading as exc:
            assert str(exc)


@hsettings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300)
    | st.builds(lambda n, c: c * n, st.integers(0, 60_000), st.sampled_from([b"[", b"{", b"9"]))
)
def test_property_decoder_on_any_bytes(raw):
    """Any bytes as an event body (deep nesting, huge numbers, invalid UTF-8) never raise."""
    _check_event(raw)
