"""Making the SQLAlchemy engine for the configured database.

* ``SQL_URL`` set: any SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``,
  ``mssql+pyodbc://...``).
* ``SQL_SERVER`` + ``SQL_DATABASE`` set (Azure SQL): ODBC Driver 18, encrypted, passwordless: each
  new connection gets a fresh Entra access token from azure-identity (the Function App's managed
  identity in Azure, the developer's ``az login`` locally), passed as ``SQL_COPT_SS_ACCESS_TOKEN``.
* Neither: SQLite under ``DATA_DIR`` (the embedded default).

pyodbc is imported only when an mssql engine is made (SQLAlchemy loads the DBAPI in
``create_engine``), so the app starts without unixODBC wherever SQL Server is not used.

Server engines retry transient connection failures for ``SQL_RETRY_SECONDS``
(:mod:`shared.db.retry`): an Azure SQL serverless database paused after an idle hour refuses the
first connections while it resumes. Pooled connections are pre-pinged, so one that died while
idle (a failover, a server restart) is replaced through the same retrying connect.
"""

from __future__ import annotations

import struct
import urllib.parse
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from shared.db.dialects import MSSQL_DIALECT_OPTIONS
from shared.db.retry import install_connect_retry
from shared.settings import Settings

# pyodbc connection attribute for an Entra access token (msodbcsql.h).
SQL_COPT_SS_ACCESS_TOKEN = 1256
AZURE_SQL_SCOPE = "https://database.windows.net/.default"
# Seconds one PostgreSQL connection attempt may take (libpq waits forever by default, which
# would defeat a bounded retry).
PG_CONNECT_TIMEOUT = 15


def make_engine(settings: Settings) -> Engine:
    """The engine for ``settings``; creates the SQLite folder when needed."""
    if settings.sql_url:
        return engine_for_url(settings.sql_url, settings.sql_retry_seconds)
    return azure_sql_engine(
        settings.sql_server or "",
        settings.sql_database or "",
        retry_seconds=settings.sql_retry_seconds,
    )


def engine_for_url(url: str, retry_seconds: float = 0.0) -> Engine:
    """An engine for a SQLAlchemy URL, tuned per dialect.

    ``retry_seconds``: how long new connections retry transient failures (SQLite: never; 0:
    off, the default for tools and tests; the app passes ``SQL_RETRY_SECONDS``).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "mssql":
        # fast_executemany sends a bulk insert as one parameter array instead of row by row.
        engine = create_engine(
            url, fast_executemany=True, pool_pre_ping=True, **MSSQL_DIALECT_OPTIONS
        )
    elif parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        engine = create_engine(
            url, pool_pre_ping=True, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT}
        )
    else:
        engine = create_engine(url, pool_pre_ping=True)
    install_connect_retry(engine, retry_seconds)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the HTTP API read while a run writes; NORMAL sync is durable across app crashes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def azure_sql_odbc_string(server: str, database: str) -> str:
    """The ODBC connection string for Azure SQL with token authentication."""
    return (
        "Driver={ODBC Driver 18 for SQL Server};"
        f"Server=tcp:{server},1433;Database={database};"
        "Encrypt=yes;TrustServerCertificate=no;Connection Timeout=30;"
    )


def azure_sql_engine(
    server: str, database: str, credential=None, retry_seconds: float = 0.0
) -> Engine:
    """An mssql+pyodbc engine whose connections authenticate with an Entra access token."""
    odbc = urllib.parse.quote_plus(azure_sql_odbc_string(server, database))
    engine = create_engine(
        f"mssql+pyodbc:///?odbc_connect={odbc}",
        fast_executemany=True,
        pool_pre_ping=True,
        **MSSQL_DIALECT_OPTIONS,
    )
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()

    @event.listens_for(engine, "do_connect")
    def _token(_dialect, _conn_rec, _cargs, cparams):
        token = credential.get_token(AZURE_SQL_SCOPE).token.encode("utf-16-le")
        cparams["attrs_before"] = {
            SQL_COPT_SS_ACCESS_TOKEN: struct.pack(f"<I{len(token)}s", len(token), token)
        }

    # After the token listener: listeners run in order, and this one connects (with the token
    # already in cparams; a token lasts an hour, far longer than the retries).
    install_connect_retry(engine, retry_seconds)
    return engine
