"""Plain bulk inserts (no conflict handling) at the driver's speed.

SQLAlchemy's per-row parameter processing costs ~20 us a row, more than the insert itself, and
recording writes hundreds of thousands of prediction rows per run. The statement is still the
SQLAlchemy construct, compiled for the connection's dialect; only the row handling changes:

* PostgreSQL: ``COPY ... FROM STDIN`` through psycopg;
* SQLite: the DBAPI's ``executemany`` with values already in SQLAlchemy's storage format
  (ISO text with microseconds for ``DateTime``, 0/1 for ``Boolean``);
* anything else (SQL Server with ``fast_executemany``): SQLAlchemy's own executemany.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Boolean, Connection, DateTime, Table, insert


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


def _sqlite_datetime(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(" ", "microseconds")


def _sqlite_bool(value) -> int | None:
    return None if value is None else int(bool(value))
