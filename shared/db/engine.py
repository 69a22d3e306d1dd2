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
first connections while it resumes. Pooled connections are pinged when checked out
(:func:`install_checkout_ping`), so one that died while idle (a failover, a server restart) is
replaced through the same retrying connect. Ingestion, whose unit of work is retried whole,
skips that round trip for a connection used in the last ``TRUSTED_IDLE_SECONDS``
(:func:`trust_recent_connections`): a dead one fails its statement and the retry reconnects.
"""

from __future__ import annotations

import contextlib
import struct
import time
import urllib.parse
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, exc
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
        engine = create_engine(url, fast_executemany=True, **MSSQL_DIALECT_OPTIONS)
    elif parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        engine = create_engine(url, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT})
    else:
        engine = create_engine(url)
    install_checkout_ping(engine)
    install_connect_retry(engine, retry_seconds)
    return engine


# A pooled connection used this recently is not pinged when a unit of work that is retried whole
# checks it out inside trust_recent_connections(): ingestion's hot path, where the ping would be
# one round trip in three. Idle longer (an Azure load balancer drops idle TCP flows after 4
# minutes), it is pinged as always.
TRUSTED_IDLE_SECONDS = 30.0
_LAST_USED = "shared_last_used"
_FRESH = "shared_fresh"
_trust_recent: ContextVar[bool] = ContextVar("trust_recent_connections", default=False)


@contextlib.contextmanager
def trust_recent_connections() -> Iterator[None]:
    """Within this block, checkouts skip the ping of connections used in the last
    ``TRUSTED_IDLE_SECONDS``. Only for work that is retried whole on a transient error
    (:func:`shared.db.retry.call_with_sql_retry`): a connection that died meanwhile fails the
    first statement, SQLAlchemy invalidates it, and the retry gets a new one."""
    token = _trust_recent.set(True)
    try:
        yield
    finally:
        _trust_recent.reset(token)


def install_checkout_ping(engine: Engine) -> None:
    """SQLAlchemy's ``pool_pre_ping``, skippable for recently used connections (see
    :func:`trust_recent_connections`): a ``SELECT 1`` when a pooled connection is checked out;
    if it finds the connection dead, the pool replaces it (through the connect retry)."""
    dialect = engine.dialect

    @event.listens_for(engine, "connect")
    def _connected(_dbapi_connection, record) -> None:
        record.info[_FRESH] = True  # just connected: nothing to check (as pool_pre_ping)

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection, record) -> None:
        if record is not None:
            record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection, record, _proxy) -> None:
        if record.info.pop(_FRESH, False):
            return
        last = record.info.get(_LAST_USED)
        if (
            last is not None
            and _trust_recent.get()
            and time.monotonic() - last < TRUSTED_IDLE_SECONDS
        ):
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as err:
            if dialect.is_disconnect(err, dbapi_connection, None):
                # The pool replaces this connection and every one pooled before now.
                raise exc.InvalidatePoolError(str(err)) from err
            raise


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
        **MSSQL_DIALECT_OPTIONS,
    )
    install_checkout_ping(engine)
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
