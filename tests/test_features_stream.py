"""Reading a window's features on PostgreSQL through COPY gives exactly the driver's rows.

``shared.features.stream_features`` reads PostgreSQL with a binary ``COPY`` of one row per
sensor, the text of its rows as CSV lines made by the server, parsed by Arrow (4-5x faster
than the driver's rows); every other engine steps the driver's cursor. Both must give the
same tables: the same rows, ids and bit-identical floats, partitions of whole sensors,
whatever the ids (quotes, commas, newlines, non-ASCII) and values (extremes, many digits).
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta

import pyarrow as pa
import pytest
import sqlalchemy as sa

from shared.db import migrate
from shared.db.schema import aggregate_widths, bucket_aggregates  # widths: 60 by migration
from shared.features import (
    _binary_copy_texts,
    features_query,
    features_table,
    sensor_bounds,
    stream_features,
)
from tests.conftest import fresh_postgres_url

T0 = datetime(2026, 3, 1)
IDS = ["dev-1", "d,comma", 'd"quote', "d\nnewline", "dé-ünicode", "d'apos", " spaced "]
VALUES = [0.1 + 0.2, 1e-300, 1e300, -2.5, 123456789.123456789, math.pi, 5e-324]


@pytest.fixture
def pg_engine(postgres_server):
    engine = sa.create_engine(fresh_postgres_url(postgres_server))
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def _fill(engine, rng: random.Random) -> int:
    rows = []
    for d, device in enumerate(IDS):
        for s in range(3):
            for b in rng.sample(range(70), rng.randint(1, 60)):  # sensors with gaps
                value = VALUES[(d + s + b) % len(VALUES)] * rng.choice((1, -1))
                count = rng.randint(1, 12)
                rows.append(
                    {
                        "bucket_seconds": 60,
                        "bucket_start": T0 + timedelta(minutes=b - 5),  # some outside
                        "device": device,
                        "sensor": f"s{s}," if s == 2 else f"s{s}",
                        "count": count,
                        "sum": value * count,
                        "min": value - abs(value) / 3,
                        "max": value + abs(value) / 7,
                        "sum_sq": value * value * count if abs(value) < 1e150 else 1e300,
                    }
                )
    with engine.begin() as conn:
        assert conn.execute(sa.select(aggregate_widths.c.bucket_seconds)).scalars().all() == [60]
        conn.execute(sa.insert(bucket_aggregates), rows)
    return len(rows)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # std of 1e300
@pytest.mark.parametrize("batch_rows", [1, 7, 50_000])
def test_copy_stream_equals_the_drivers_rows(pg_engine, batch_rows):
    _fill(pg_engine, random.Random(batch_rows))
    end = T0 + timedelta(hours=1)
    with pg_engine.connect() as conn:
        expected = features_table(conn.execute(features_query(T0, end, 60)).all(), 60)
        parts = list(stream_features(conn, T0, end, 60, batch_rows=batch_rows))
    assert expected.num_rows > 100
    got = pa.concat_tables(parts)
    assert got.schema == expected.schema
    assert got.equals(expected), (got.slice(0, 3).to_pylist(), expected.slice(0, 3).to_pylist())
    # Partitions hold whole sensors: no sensor in two of them.
    seen = set()
    for part in parts:
        devices, sensors, bounds = sensor_bounds(part)
        keys = {(devices[a], sensors[a]) for a in bounds[:-1]}
        assert not keys & seen
        seen |= keys
    assert {d for d, _ in seen} == set(IDS)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_copy_stream_with_a_sensor_filter_and_nothing_in_the_window(pg_engine):
    _fill(pg_engine, random.Random(3))
    end = T0 + timedelta(hours=1)
    wanted = [("d,comma", "s2,"), ('d"quote', "s0")]
    with pg_engine.connect() as conn:
        expected = features_table(
            conn.execute(features_query(T0, end, 60, sensors=wanted)).all(), 60
        )
        got = pa.concat_tables(list(stream_features(conn, T0, end, 60, sensors=wanted)))
        later = T0 + timedelta(days=3)
        empty = list(stream_features(conn, later, later + timedelta(hours=1), 60))
    assert got.equals(expected) and got.num_rows > 0
    assert empty == []


def _binary_copy(texts: list[bytes]) -> bytes:
    """PostgreSQL's binary COPY format around one text field per row."""
    out = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
    for text in texts:
        out += (1).to_bytes(2, "big") + len(text).to_bytes(4, "big") + text
    return out + (-1).to_bytes(2, "big", signed=True)


@pytest.mark.parametrize("seed", range(5))
def test_binary_copy_rows_are_read_whatever_the_message_boundaries(seed):
    """libpq hands a row per message, the header with the first one; the reader must not depend
    on that: any split of the stream gives the same rows, and nothing after the end counts."""
    rng = random.Random(seed)
    texts = [b"", b'"d,1","s",1,2,3.5,,1e300\n', "é\n".encode() * 50, b"\x00\xff" * 3]
    texts *= rng.randint(1, 4)
    stream = _binary_copy(texts)
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(1, 40))))
    messages = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert list(_binary_copy_texts(iter([*messages, b"ignored after the end"]))) == texts
    assert list(_binary_copy_texts(iter([stream]))) == texts


def test_binary_copy_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="not a binary COPY"):
        list(_binary_copy_texts(iter([b"x" * 40])))
    two_fields = _binary_copy([b"a"]).replace(b"\x00\x01\x00\x00\x00\x01a", b"\x00\x02")
    with pytest.raises(ValueError, match="2 fields"):
        list(_binary_copy_texts(iter([two_fields])))
    null = _binary_copy([]).replace(b"\xff\xff", b"\x00\x01\xff\xff\xff\xff\xff\xff")
    with pytest.raises(ValueError, match="null"):
        list(_binary_copy_texts(iter([null])))
