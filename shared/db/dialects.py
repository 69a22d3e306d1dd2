"""Dialect-specific SQL as SQLAlchemy constructs, compiled per engine.

Two things differ between SQLite, PostgreSQL and SQL Server here:

* time bucketing: :class:`epoch_seconds` turns a timestamp column into whole seconds since
  1970-01-01 UTC, from which a bucket index is an integer division;
* insert-if-absent: :func:`insert_if_absent` builds an executemany-able INSERT that skips rows
  whose key already exists (``ON CONFLICT DO NOTHING`` on SQLite/PostgreSQL, ``INSERT ... SELECT
  ... WHERE NOT EXISTS`` on SQL Server, which has no ON CONFLICT).

Tests compile every statement for ``mssql+pyodbc`` as well as running it on SQLite and PostgreSQL.

Compiling for SQL Server without a server (the offline migration script, the tests) needs the
dialect as a connection would leave it: :func:`mssql_dialect`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    BigInteger,
    DateTime,
    Table,
    and_,
    bindparam,
    exists,
    insert,
    literal_column,
    select,
)
from sqlalchemy.dialects import mssql, postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

# Options every SQL Server engine is made with. deprecate_large_types: Text is VARCHAR(max), never
# the deprecated TEXT (which cannot be compared, grouped or sorted). SQLAlchemy would infer it from
# the server version on connect, but a dialect that never connects (offline) would render TEXT.
MSSQL_DIALECT_OPTIONS = {"deprecate_large_types": True}
# What Azure SQL Database reports as its version (SELECT SERVERPROPERTY('ProductVersion')).
AZURE_SQL_VERSION = (12, 0, 2000, 8)


def as_connected_to_azure_sql(dialect: Dialect) -> Dialect:
    """Set up an mssql ``dialect`` that has not connected as connecting to Azure SQL would.

    ``MSDialect.initialize`` derives version-dependent rendering from ``server_version_info``
    on the first connection; a dialect compiling offline has none (``()``), so it renders as
    for SQL Server 2000 (``TEXT``, ``DATETIME`` for ``Date``). This applies what initialize
    would, without a server.
    """
    if dialect.name != "mssql":
        return dialect
    for name, value in MSSQL_DIALECT_OPTIONS.items():
        setattr(dialect, name, value)
    dialect.server_version_info = AZURE_SQL_VERSION
    dialect._setup_version_attributes()  # the version-derived part of MSDialect.initialize
    return dialect


def mssql_dialect() -> Dialect:
    """The ``mssql+pyodbc`` dialect as the app's engines have it once connected to Azure SQL."""
    return as_connected_to_azure_sql(mssql.pyodbc.dialect(**MSSQL_DIALECT_OPTIONS))


class epoch_seconds(FunctionElement):
    """Whole seconds since the Unix epoch of a naive-UTC timestamp expression."""

    type = BigInteger()
    inherit_cache = True
    name = "epoch_seconds"


@compiles(epoch_seconds, "sqlite")
def _epoch_sqlite(element, compiler, **kw):
    # Only the whole-second part of the stored text ('YYYY-MM-DD HH:MM:SS.ffffff'): SQLite's date
    # functions keep milliseconds and round, so 10:00:59.9996 would count as 10:01:00.
    (arg,) = element.clauses
    return f"CAST(strftime('%s', substr({compiler.process(arg, **kw)}, 1, 19)) AS INTEGER)"


@compiles(epoch_seconds, "postgresql")
def _epoch_postgresql(element, compiler, **kw):
    (arg,) = element.clauses
    return f"CAST(floor(extract(epoch FROM {compiler.process(arg, **kw)})) AS BIGINT)"


@compiles(epoch_seconds, "mssql")
def _epoch_mssql(element, compiler, **kw):
    (arg,) = element.clauses
    return f"DATEDIFF_BIG(second, CAST('1970-01-01' AS DATETIME2), {compiler.process(arg, **kw)})"


def bucket_index(ts: ColumnElement, bucket_seconds: int) -> ColumnElement:
    """Integer bucket number of ``ts`` for buckets of ``bucket_seconds`` aligned to the epoch.

    ``bucket_seconds`` is an int from validated settings, rendered as a literal so that the
    GROUP BY expression is textually identical to the SELECT one (SQL Server requires it).
    """
    seconds = int(bucket_seconds)
    return epoch_seconds(ts) // literal_column(str(seconds), BigInteger())


def insert_if_absent(table: Table, key_columns: Sequence[str], dialect_name: str):
    """An INSERT of all ``table`` columns that does nothing for rows whose key exists.

    Execute it with a list of dicts (executemany). Returns the statement for ``dialect_name``.
    """
    names = [c.name for c in table.columns if not (c.autoincrement is True and c.primary_key)]
    if dialect_name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(key_columns))
    if dialect_name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(key_columns))
    # SQL Server: INSERT INTO t (cols) SELECT ?, ?, ... WHERE NOT EXISTS (key match).
    params = {name: bindparam(name, type_=table.c[name].type) for name in names}
    key_match = and_(*(table.c[k] == params[k] for k in key_columns))
    source = select(*(params[n] for n in names)).where(~exists().where(key_match))
    return insert(table).from_select(names, source)


class binary_ordered(FunctionElement):
    """A string expression compared by code point (binary collation), whatever the column's
    collation: SQL Server's default collations ignore case and PostgreSQL's locale ones skip
    '-' and '_', so their order is not Python's. Ids are ASCII, so Python's ``min``/``max`` of
    ids agree with comparisons made through this construct on every engine."""

    inherit_cache = True
    name = "binary_ordered"


@compiles(binary_ordered)
def _binary_default(element, compiler, **kw):
    (arg,) = element.clauses
    return f"({compiler.process(arg, **kw)} COLLATE BINARY)"


@compiles(binary_ordered, "postgresql")
def _binary_postgresql(element, compiler, **kw):
    (arg,) = element.clauses
    return f'({compiler.process(arg, **kw)} COLLATE "C")'


@compiles(binary_ordered, "mssql")
def _binary_mssql(element, compiler, **kw):
    (arg,) = element.clauses
    return f"({compiler.process(arg, **kw)} COLLATE Latin1_General_BIN2)"


class bucket_start_of(FunctionElement):
    """The start of the epoch-aligned bucket holding a naive-UTC timestamp, as a timestamp.

    ``bucket_start_of(ts, seconds)``: ``seconds`` is an integer expression (a literal, or the
    ``bucket_seconds`` column of ``aggregate_widths``). Each engine's value is exactly what
    SQLAlchemy stores for that instant, so rows it writes compare equal to bound parameters:
    on SQLite that is ISO text with six decimals.
    """

    type = DateTime()
    inherit_cache = True
    name = "bucket_start_of"


def _bucket_epoch(element, compiler, **kw) -> str:
    ts, seconds = element.clauses
    epoch = compiler.process(epoch_seconds(ts), **kw)
    width = compiler.process(seconds, **kw)
    return f"(({epoch}) / ({width}) * ({width}))"


@compiles(bucket_start_of, "sqlite")
def _bucket_start_sqlite(element, compiler, **kw):
    return (
        f"(strftime('%Y-%m-%d %H:%M:%S', {_bucket_epoch(element, compiler, **kw)}, 'unixepoch')"
        " || '.000000')"
    )


@compiles(bucket_start_of, "postgresql")
def _bucket_start_postgresql(element, compiler, **kw):
    return (
        f"(CAST('1970-01-01' AS TIMESTAMP WITHOUT TIME ZONE) + "
        f"CAST({_bucket_epoch(element, compiler, **kw)} AS DOUBLE PRECISION) * INTERVAL '1 second')"
    )


@compiles(bucket_start_of, "mssql")
def _bucket_start_mssql(element, compiler, **kw):
    # DATEADD takes an int: whole days, then the seconds within the day (no 2038 overflow).
    b = _bucket_epoch(element, compiler, **kw)
    return (
        f"DATEADD(second, CAST({b} % 86400 AS INT), "
        f"DATEADD(day, CAST({b} / 86400 AS INT), CAST('1970-01-01' AS DATETIME2(6))))"
    )
