"""``shared.db.bulk.insert_arrow`` stores exactly what the row-tuple ``bulk_insert`` stores, on
SQLite and PostgreSQL (whose path is a CSV ``COPY`` written by Arrow), including the values CSV
could garble: NULL next to empty strings, quotes, commas, newlines, backslashes and a lone
``\\.`` (COPY's end-of-data marker) in text, JSON explanations, NaN and infinities, booleans,
timestamps with and without microseconds or a time zone. SQL Server's path (SQLAlchemy's
executemany) runs here on SQLite with every statement compiled for mssql (``mssql_check``).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import sqlalchemy as sa

from shared.db import bulk
from shared.db.schema import predictions
from shared.runs.recording import PREDICTION_ROW

TEXTS = [
    "plain",
    "",
    None,
    'quote " and, comma',
    "line\nbreak\r\nand\ttab",
    "back\\slash \\N",
    "\\.",
    "é ünïcode ✓",
    "x" * 64,
]
N = len(TEXTS)
EXPLANATION = json.dumps({"summary": 'max "23.7"\nabove, 11.9 to 17.6', "novel": [], "x": None})
START = datetime(2026, 3, 1, 12, 0, 0, 123456)


def arrow_rows(zone=None) -> pa.Table:
    """``N`` prediction rows (without run_id and chunk_id) in the stored Arrow types."""
    buckets = [START + timedelta(minutes=i, microseconds=-123456 * (i % 2)) for i in range(N)]
    stamp = pa.timestamp("us", tz=zone)
    return pa.table(
        {
            "device": pa.array([f"dev-{i}" for i in range(N)]),
            "sensor": pa.array(["none" if t is None else t for t in TEXTS]),
            "bucket_start": pa.array(
                [b.replace(tzinfo=UTC) if zone else b for b in buckets], stamp
            ),
            "count": pa.array([0, 1, 2**31 - 1, 7, 8, 9, 10, 11, 12], pa.int64()),
            "mean": pa.array([1.5, None, math.nan, 0.1 + 0.2, 1e-300, 1e300, -0.0, 2.0, 3.0]),
            "min": pa.array([-math.inf, 0.0, None, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            "max": pa.array([math.inf, None, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]),
            "std": pa.array([None] * N, pa.float64()),
            "score": pa.array([i / (N - 1) for i in range(N)]),
            "is_anomaly": pa.array([i % 3 == 0 for i in range(N)]),
            "model_version": pa.array(range(N), pa.int64()),
            "expected_low": pa.array([0.25, None, *[1.0] * (N - 2)]),
            "expected_high": pa.array([None, 0.75, *[2.0] * (N - 2)]),
            "explanation": pa.array([EXPLANATION, None, *TEXTS[:-2]]),
        }
    )


def stored(conn, run_id: str) -> list[tuple]:
    """The run's rows without run_id, floats by repr (NaN equals NaN), ordered by device."""
    rows = conn.execute(
        sa.select(*[predictions.c[name] for name in PREDICTION_ROW])
        .where(predictions.c.run_id == run_id)
        .order_by(predictions.c.device)
    ).all()
    return [tuple(repr(v) if isinstance(v, float) else v for v in row[1:]) for row in rows]


def test_insert_arrow_stores_what_row_tuples_store(ctx):
    rows = arrow_rows()
    tuples = [("by-rows", "c0", *row.values()) for row in rows.to_pylist()]
    with ctx.engine.begin() as conn:
        bulk.bulk_insert(conn, predictions, PREDICTION_ROW, tuples)
        # Slices of 2 rows, and a zone-aware bucket column (converted to naive UTC).
        inserted = bulk.insert_arrow(
            conn,
            predictions,
            arrow_rows(zone="UTC"),
            constants={"run_id": "by-arrow", "chunk_id": "c0"},
            slice_rows=2,
        )
        # Record batches too (a ParquetFile's iter_batches), names as dictionaries.
        encoded = rows.set_column(0, "device", pa.compute.dictionary_encode(rows["device"]))
        bulk.insert_arrow(
            conn,
            predictions,
            encoded.to_batches(max_chunksize=4),
            constants={"run_id": "by-batches", "chunk_id": "c0"},
        )
    assert inserted == N
    with ctx.engine.connect() as conn:
        reference = stored(conn, "by-rows")
        assert len(reference) == N
        assert stored(conn, "by-arrow") == reference
        assert stored(conn, "by-batches") == reference
        # The texts came back as written, NULL apart from the empty string.
        explanations = [r[-1] for r in reference]
        assert explanations[0] == EXPLANATION and explanations[1] is None
        assert explanations[2:] == TEXTS[:-2]
        if conn.dialect.name == "postgresql":  # SQLite stores NaN as NULL, either way
            assert reference[2][5] == "nan" and reference[0][6] == "-inf"


def test_sql_server_path_compiles_for_mssql_and_stores_the_same(ctx, mssql_check):
    """The executemany path SQL Server takes, run on SQLite with each statement compiled for
    mssql: the same rows as the SQLite path, one INSERT per slice."""
    if ctx.engine.dialect.name != "sqlite":
        return  # one engine is enough for the generic path; PostgreSQL's is COPY
    rows = arrow_rows()
    before = len(mssql_check.compiled)
    with ctx.engine.begin() as conn:
        bulk.insert_arrow(conn, predictions, rows, {"run_id": "sqlite-path", "chunk_id": "c0"})
        for start in range(0, N, 4):
            part = bulk._naive_timestamps(rows.slice(start, 4))
            bulk._sqlalchemy_executemany(
                conn, predictions, part, {"run_id": "mssql-path", "chunk_id": "c0"}
            )
    inserts = [s for s in mssql_check.compiled[before:] if s.startswith("INSERT INTO predictions")]
    assert len(inserts) == 3, inserts  # one per slice of 4 rows
    assert "run_id" in inserts[0] and "explanation" in inserts[0]
    with ctx.engine.connect() as conn:
        assert stored(conn, "mssql-path") == stored(conn, "sqlite-path")
