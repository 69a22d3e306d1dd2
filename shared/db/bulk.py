"""Plain bulk inserts (no conflict handling) at the driver's speed.

SQLAlchemy's per-row parameter processing costs ~20 us a row, more than the insert itself, and
recording writes hundreds of thousands of prediction rows per run. The statement is still the
SQLAlchemy construct, compiled for the connection's dialect; only the row handling changes:

* PostgreSQL: ``COPY ... FROM STDIN`` through psycopg;
* SQLite: the DBAPI's ``executemany`` with values already in SQLAlchemy's storage format
  (ISO text with microseconds for ``DateTime``, 0/1 for ``Boolean``);
* anything else (SQL Server with ``fast_executemany``): SQLAlchemy's own executemany.

:func:`insert_arrow` takes Arrow columns and converts them a slice at a time, so its memory is a
slice's, not the rows' (a Python tuple of a prediction row costs ~700 bytes, its Arrow columns
~75: issue 12); :func:`bulk_insert` takes rows already built as tuples.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from sqlalchemy import Boolean, Connection, DateTime, Float, Integer, Table, insert


def bulk_insert(conn: Connection, table: Table, columns: Sequence[str], rows: list[tuple]) -> None:
    """Insert ``rows`` (tuples in ``columns`` order) into ``table`` in the current transaction."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        finally:
            cursor.close()
        return
    if dialect == "sqlite":
        compiled = insert(table).compile(dialect=conn.dialect, column_keys=list(columns))
        order = [columns.index(name) for name in compiled.positiontup]
        kinds = [table.c[columns[i]].type for i in order]
        converters = [
            _sqlite_datetime
            if isinstance(kind, DateTime)
            else _sqlite_bool
            if isinstance(kind, Boolean)
            else None
            for kind in kinds
        ]
        if order == list(range(len(columns))) and not any(converters):
            params = rows
        else:
            params = [
                tuple(
                    row[i] if conv is None else conv(row[i])
                    for i, conv in zip(order, converters, strict=True)
                )
                for row in rows
            ]
        conn.exec_driver_sql(str(compiled), params)
        return
    conn.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])


SLICE_ROWS = 10_000
"""Rows per slice in :func:`insert_arrow`: ~7 MB of Python values on the executemany paths
(~700 bytes a prediction row), ~1.5 MB of CSV on PostgreSQL's; a slice is what the insert holds
beyond its Arrow input."""


def insert_arrow(
    conn: Connection,
    table: Table,
    data: pa.Table | Iterable[pa.RecordBatch],
    constants: Mapping[str, Any] | None = None,
    slice_rows: int = SLICE_ROWS,
) -> int:
    """Insert Arrow rows (and ``constants`` on every row) into ``table``, ``slice_rows`` at a time.

    ``data``'s column names are ``table``'s; its values are already in the stored types
    (timestamps naive UTC or zone-aware, booleans, floats, strings, dictionaries of strings).
    Only one slice at a time becomes driver
    values, so the insert's memory is a slice's, whatever the number of rows. Runs in the
    current transaction; returns the number of rows inserted.
    """
    constants = dict(constants or {})
    writers = {"postgresql": _copy_csv, "sqlite": _sqlite_executemany}
    write = writers.get(conn.dialect.name, _sqlalchemy_executemany)
    total = 0
    for part in _slices(data, slice_rows):
        if part.num_rows:
            write(conn, table, part, constants)
            total += part.num_rows
    return total


def _slices(data: pa.Table | Iterable[pa.RecordBatch], slice_rows: int) -> Iterator[pa.Table]:
    batches = [data] if isinstance(data, pa.Table) else data
    for batch in batches:
        for start in range(0, batch.num_rows, slice_rows):
            part = batch.slice(start, slice_rows)
            part = part if isinstance(part, pa.Table) else pa.Table.from_batches([part])
            yield _naive_timestamps(part)


def _naive_timestamps(part: pa.Table) -> pa.Table:
    """Timestamps as stored: naive UTC microseconds (a zone-aware column is converted)."""
    for i, field in enumerate(part.schema):
        if pa.types.is_timestamp(field.type) and field.type != pa.timestamp("us"):
            part = part.set_column(i, field.name, part.column(i).cast(pa.timestamp("us")))
    return part


def _with_constants(part: pa.Table, table: Table, constants: Mapping[str, Any]) -> pa.Table:
    """``part`` with a column per constant (in the column's Arrow type), constants first."""
    columns = {}
    for name, value in constants.items():
        kind = _arrow_type(table.c[name].type)
        columns[name] = pa.array([value], kind).take(pa.array(np.zeros(part.num_rows, np.int32)))
    for name in part.column_names:
        columns[name] = part.column(name)
    return pa.table(columns)


def _arrow_type(kind) -> pa.DataType:
    if isinstance(kind, Boolean):
        return pa.bool_()
    if isinstance(kind, DateTime):
        return pa.timestamp("us")
    if isinstance(kind, Integer):
        return pa.int64()
    if isinstance(kind, Float):
        return pa.float64()
    return pa.string()


def _copy_csv(conn: Connection, table: Table, part: pa.Table, constants: Mapping) -> None:
    """PostgreSQL: ``COPY ... FROM STDIN (FORMAT csv)`` of the slice written by Arrow's CSV
    writer. Arrow quotes every string and leaves a null unquoted and empty, which COPY reads as
    NULL (a quoted ``""`` stays an empty string); booleans are ``true``/``false``, timestamps
    ``YYYY-MM-DD HH:MM:SS.ffffff``, floats the shortest text that reads back the same double."""
    part = _with_constants(part, table, constants)
    buffer = io.BytesIO()
    pa_csv.write_csv(part, buffer, pa_csv.WriteOptions(include_header=False))
    names = ", ".join(f'"{name}"' for name in part.column_names)
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        with cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN (FORMAT csv)') as copy:
            copy.write(buffer.getbuffer())
    finally:
        cursor.close()


def _sqlite_executemany(conn: Connection, table: Table, part: pa.Table, constants) -> None:
    """SQLite: the DBAPI's executemany, values in SQLAlchemy's storage format (ISO text with
    microseconds for ``DateTime``, 0/1 for ``Boolean``), converted by Arrow."""
    columns = [*constants, *part.column_names]
    compiled = insert(table).compile(dialect=conn.dialect, column_keys=columns)
    values = []
    for name in compiled.positiontup:
        if name in constants:
            value = constants[name]
            kind = table.c[name].type
            if isinstance(kind, DateTime):
                value = _sqlite_datetime(value)
            elif isinstance(kind, Boolean):
                value = _sqlite_bool(value)
            values.append(itertools.repeat(value, part.num_rows))
            continue
        column = part.column(name)
        if pa.types.is_timestamp(column.type):
            column = pc.strftime(column, format="%Y-%m-%d %H:%M:%S")  # %S has the microseconds
        elif pa.types.is_boolean(column.type):
            column = column.cast(pa.int64())
        values.append(column.to_pylist())
    conn.exec_driver_sql(str(compiled), list(zip(*values, strict=True)))


def _sqlalchemy_executemany(conn: Connection, table: Table, part: pa.Table, constants) -> None:
    """Any other dialect (SQL Server with ``fast_executemany``): SQLAlchemy's executemany."""
    rows = part.to_pylist()
    for row in rows:
        row.update(constants)
    conn.execute(insert(table), rows)


def _sqlite_datetime(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(" ", "microseconds")


def _sqlite_bool(value) -> int | None:
    return None if value is None else int(bool(value))
