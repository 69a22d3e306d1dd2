"""The schema on three engines: migrations applied to SQLite and PostgreSQL match the metadata
exactly, are idempotent, and compile to a SQL Server script offline."""

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from shared.db import migrate
from shared.db.dialects import bucket_index, insert_if_absent
from shared.db.engine import azure_sql_odbc_string, engine_for_url
from shared.db.schema import metadata, readings


def test_migrations_match_metadata(sql_url):
    engine = engine_for_url(sql_url)
    migrate.upgrade(engine)
    migrate.upgrade(engine)  # idempotent: a second upgrade is a no-op
    assert migrate.current_revision(engine) is not None
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
        names = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert diffs == []
    assert {t.name for t in metadata.sorted_tables} <= names


def test_migration_compiles_for_sql_server():
    script = migrate.offline_sql("mssql+pyodbc://")
    assert "CREATE TABLE readings" in script
    assert "DATETIME2" in script or "DATETIME" in script
    assert "CONSTRAINT pk_readings PRIMARY KEY (ts, device, sensor)" in script
    assert "CREATE TABLE predictions" in script


def test_insert_if_absent_for_sql_server_uses_not_exists():
    from sqlalchemy.dialects import mssql

    sql = str(
        insert_if_absent(readings, ["ts", "device", "sensor"], "mssql").compile(
            dialect=mssql.pyodbc.dialect()
        )
    )
    assert sql.startswith("INSERT INTO readings (ts, device, sensor, value) SELECT")
    assert "WHERE NOT (EXISTS (SELECT" in sql


def test_bucket_index_per_dialect():
    from sqlalchemy.dialects import mssql, postgresql, sqlite

    expr = bucket_index(readings.c.ts, 60)
    sql = str(expr.compile(dialect=sqlite.dialect()))
    assert "strftime('%s', substr(readings.ts, 1, 19))" in sql
    assert "extract(epoch FROM readings.ts)" in str(expr.compile(dialect=postgresql.dialect()))
    assert "DATEDIFF_BIG(second" in str(expr.compile(dialect=mssql.pyodbc.dialect()))


def test_bucket_index_values_agree_across_engines(sql_url):
    from datetime import datetime

    engine = engine_for_url(sql_url)
    migrate.upgrade(engine)
    stamps = [
        datetime(2026, 3, 1, 10, 0, 59, 999000),
        datetime(2026, 3, 1, 10, 1, 59, 999900),  # SQLite's date functions would round it up
        datetime(2026, 3, 1, 10, 1, 0),
        datetime(1999, 12, 31, 23, 59, 30),
    ]
    with engine.begin() as conn:
        conn.execute(
            readings.insert(),
            [{"ts": ts, "device": "d", "sensor": "s", "value": 1.0} for ts in stamps],
        )
        got = conn.execute(
            sa.select(readings.c.ts, bucket_index(readings.c.ts, 60)).order_by(readings.c.ts)
        ).all()
    engine.dispose()
    epoch = datetime(1970, 1, 1)
    expected = sorted((ts, int((ts - epoch).total_seconds()) // 60) for ts in stamps)
    assert [(ts, b) for ts, b in got] == expected
    assert all(isinstance(b, int) for _, b in got)


def test_azure_sql_connection_string_is_encrypted_and_passwordless():
    odbc = azure_sql_odbc_string("srv.database.windows.net", "db")
    assert "ODBC Driver 18 for SQL Server" in odbc
    assert "Encrypt=yes" in odbc
    assert "Pwd" not in odbc and "UID" not in odbc
