"""shared.db.pg_arrays: arrays built in PostgreSQL's binary format arrive exactly as psycopg's
own adaptation of the same lists does (a real PostgreSQL server decodes both)."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

from shared.db import pg_arrays
from tests.conftest import fresh_postgres_url

TIMESTAMPS = [
    datetime(2026, 5, 1, 12, 0, 0, 123456),
    datetime(2000, 1, 1),  # the binary format's epoch: 0
    datetime(1999, 12, 31, 23, 59, 59, 999999),  # before it: negative
    datetime(1970, 1, 1),
    datetime(9999, 12, 31, 23, 59, 59, 999999),
    datetime(2026, 5, 1, 12, 0, 0, 123456),  # repeated: from the cache
] + [datetime(2026, 1, 1) + timedelta(microseconds=7 * i) for i in range(500)]
IDS = ["dev-1", "s.2", "ünïcode-ид", "", "x" * 64, "dev-1"] + [f"d{i}" for i in range(500)]
VALUES = [0.0, -0.0, 1.5, -2.25, 1e308, -1e-308, 5e-324, 13.125477333023335, 0.1, 1.0] + [
    i / 7 for i in range(496)
]


def test_binary_arrays_decode_as_psycopgs_own(postgres_server):
    url = fresh_postgres_url(postgres_server).replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as conn:
        pg_arrays.register(conn)
        ours = conn.execute(
            "SELECT %b::timestamp[], %b::varchar[], %b::float8[]",
            (
                pg_arrays.timestamp_array(TIMESTAMPS),
                pg_arrays.varchar_array(IDS),
                pg_arrays.float8_array(VALUES),
            ),
        ).fetchone()
        theirs = conn.execute(
            "SELECT %s::timestamp[], %s::varchar[], %s::float8[]", (TIMESTAMPS, IDS, VALUES)
        ).fetchone()
        empty = conn.execute(
            "SELECT cardinality(%b::timestamp[]), cardinality(%b::float8[])",
            (pg_arrays.timestamp_array([]), pg_arrays.float8_array([])),
        ).fetchone()
    assert ours == theirs
    assert ours == (TIMESTAMPS, IDS, VALUES)
    assert str(ours[2][1]) == "-0.0"  # the sign of zero survives
    assert empty == (0, 0)
