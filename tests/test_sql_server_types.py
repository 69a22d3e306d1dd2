"""SQL Server types: every timestamp is DATETIME2(6) and no column is TEXT, in the schema and in
the migration scripts; a reading with microseconds survives a redelivery on every engine.

SQL Server cannot run here: its DDL and statements are compiled with the app's mssql dialect
(as the app's engines have it, and as the offline script renders it) and checked as text; the
redelivery runs for real on SQLite and PostgreSQL, with every statement compiled for mssql.
"""

import re
from datetime import datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable

from shared.db import migrate
from shared.db.dialects import insert_if_absent, mssql_dialect
from shared.db.engine import engine_for_url
from shared.db.schema import metadata, readings
from shared.ingestion import ingest_events
from shared.ingestion.store import lookup_query
from tests.helpers import event

BARE_DATETIME = re.compile(r"\bDATETIME\b")  # DATETIME2 and DATETIMEOFFSET do not match
TEXT = re.compile(r"\bN?TEXT\b")


def schema_ddl(dialect) -> str:
    statements = []
    for table in metadata.sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=dialect)))
        statements += [str(CreateIndex(i).compile(dialect=dialect)) for i in table.indexes]
    return "\n".join(statements)


def app_mssql_dialects():
    """The dialect of an engine the app makes for SQL Server (not connected: nothing here can
    connect), and the one the tests and the offline script compile with."""
    engine = engine_for_url("mssql+pyodbc://user@dsn")
    return [engine.dialect, mssql_dialect()]


@pytest.mark.parametrize("which", [0, 1], ids=["engine", "compile"])
def test_schema_ddl_for_sql_server_has_datetime2_and_no_text(which):
    dialect = app_mssql_dialects()[which]
    ddl = schema_ddl(dialect)
    assert BARE_DATETIME.findall(ddl) == []
    assert TEXT.findall(ddl) == []
    assert "VARCHAR(max)" in ddl
    timestamps = [c for t in metadata.sorted_tables for c in t.columns if _is_timestamp(c)]
    assert len(timestamps) >= 17
    for column in timestamps:
        assert column.type.compile(dialect=dialect) == "DATETIME2(6)", column


def _is_timestamp(column: sa.Column) -> bool:
    return isinstance(column.type, sa.DateTime)


def test_offline_install_script_has_datetime2_and_no_text():
    script = migrate.offline_sql("mssql+pyodbc://")
    assert BARE_DATETIME.findall(script) == []
    assert TEXT.findall(script) == []
    assert "ts DATETIME2(6) NOT NULL" in script
    assert "error VARCHAR(max) NULL" in script


def test_offline_upgrade_from_0001_converts_every_timestamp_column():
    """What a deployment at 0001 runs: each timestamp column of the tables 0001 made becomes
    DATETIME2(6), with the keys and indexes that hold them dropped before and made again after."""
    first = migrate.offline_sql("mssql+pyodbc://", "0001")
    tables_of_0001 = set(re.findall(r"CREATE TABLE (\w+)", first)) - {"alembic_version"}
    script = migrate.offline_sql("mssql+pyodbc://", "0001:0002")
    assert BARE_DATETIME.findall(script) == []
    assert TEXT.findall(script) == []
    for table in (metadata.tables[name] for name in sorted(tables_of_0001)):
        for column in filter(_is_timestamp, table.columns):
            null = "NULL" if column.nullable else "NOT NULL"
            assert f"ALTER TABLE {table.name} ALTER COLUMN {column.name} DATETIME2(6) {null};" in (
                script
            )
    # Keys and indexes on a timestamp column are dropped before the ALTERs, recreated after.
    alters = script.index("ALTER COLUMN")
    last_alter = script.rindex("ALTER COLUMN")
    for table in (metadata.tables[name] for name in tables_of_0001):
        # Those 0001 made (a later revision's index, made after 0002, is already DATETIME2).
        holders = [h for h in (table.primary_key, *table.indexes) if h.name in first]
        for holder in holders:
            if any(_is_timestamp(c) for c in holder.columns):
                name = holder.name
                assert script.index(name) < alters, name
                assert script.rindex(name) > last_alter, name


def test_migrations_step_from_0001_to_head_on_real_engines(sql_url):
    """On SQLite and PostgreSQL 0002 changes nothing: a database upgraded in two steps equals
    the metadata, like one upgraded at once."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = engine_for_url(sql_url)
    migrate.upgrade(engine, "0001")
    assert migrate.current_revision(engine) == "0001"
    migrate.upgrade(engine)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diffs == []


TS = "2026-01-01T00:00:00.123456Z"
STORED = datetime(2026, 1, 1, 0, 0, 0, 123456)


def test_reading_with_microseconds_survives_redelivery(ctx, mssql_check):
    """Ingest the same event twice: one row, the second delivery reported as a duplicate, no
    conflict, no error. (Before DATETIME2, SQL Server stored .123333 and the redelivery's
    NOT EXISTS found no match: the insert broke the key and failed the batch.)"""
    body = [{"device": "dev-1", "sensor": "s-1", "ts": TS, "value": 1.5}]
    args = (ctx.engine, ctx.store, ctx.settings.deadletter_container)
    first = ingest_events([event(body, 1)], *args, now=datetime(2026, 1, 1, 1))
    again = ingest_events([event(body, 1)], *args, now=datetime(2026, 1, 1, 1))
    assert (first.counts.inserted, first.counts.duplicates) == (1, 0)
    assert (again.counts.inserted, again.counts.duplicates, again.counts.conflicts) == (0, 1, 0)
    with ctx.engine.connect() as conn:
        rows = conn.execute(sa.select(readings.c.ts, readings.c.value)).all()
    assert rows == [(STORED, 1.5)]
    assert ctx.store.list(ctx.settings.deadletter_container) == []
    # SQL Server's path (shared.ingestion.store): look the keys up, then insert the absent
    # ones. Both are compiled for mssql explicitly (PostgreSQL's path sends neither). Both
    # compare ts with a DATETIME2(6) column, and the driver is handed the microseconds unrounded.
    dialect = mssql_dialect()
    lookup = str(lookup_query(STORED, STORED, ["dev-1"]).compile(dialect=dialect))
    assert "FROM readings" in lookup and "readings.ts >=" in lookup
    insert = insert_if_absent(readings, ["ts", "device", "sensor"], "mssql").compile(
        dialect=dialect
    )
    assert "WHERE NOT (EXISTS (SELECT" in str(insert) and "readings.ts = :ts" in str(insert)
    assert readings.c.ts.type.compile(dialect=dialect) == "DATETIME2(6)"
    bind = readings.c.ts.type.dialect_impl(dialect).bind_processor(dialect)
    assert (bind(STORED) if bind else STORED) == STORED
