"""Transient SQL errors are retried with backoff for a bounded time, logged, and nothing else is.

The classification is checked on real exception objects: ``pyodbc`` errors as the ODBC driver
words them for Azure SQL (which cannot run here), ``psycopg`` errors, and SQLAlchemy's wrappers
of both. The behaviour is checked against a real PostgreSQL server of this module's own that is
stopped and started again while an entry point (the Event Hubs trigger through
``shared.context``, and the CLI) is connecting.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import datetime

import psycopg
import pyodbc
import pytest
import sqlalchemy as sa

from shared.context import AppContext, set_context
from shared.db import migrate
from shared.db.engine import make_engine
from shared.db.retry import call_with_sql_retry, error_code, is_transient, with_sql_retry
from shared.db.schema import readings
from shared.local.postgres import start_postgres
from shared.settings import Settings
from tests.conftest import fresh_postgres_url, unique_containers
from tests.helpers import event, user_function

DRIVER = "[Microsoft][ODBC Driver 18 for SQL Server]"


def odbc(kind, sqlstate: str, text: str, native: int, function="SQLDriverConnect"):
    """A pyodbc error exactly as pyodbc builds it: args (sqlstate, formatted message)."""
    return kind(sqlstate, f"[{sqlstate}] {DRIVER}{text} ({native}) ({function})")


TRANSIENT_MSSQL = {
    "40613 serverless resuming": odbc(
        pyodbc.ProgrammingError,
        "42000",
        "[SQL Server]Database 'scoring' on server 'sql-x' is not currently available.  Please "
        "retry the connection later.",
        40613,
    ),
    "40197 failover": odbc(
        pyodbc.Error,
        "HY000",
        "[SQL Server]The service has encountered an error processing your request. Please try "
        "again. Error code 4815.",
        40197,
        "SQLExecDirectW",
    ),
    "40501 busy": odbc(
        pyodbc.OperationalError, "HY000", "[SQL Server]The service is currently busy.", 40501
    ),
    "49918 resources": odbc(
        pyodbc.Error, "HY000", "[SQL Server]Cannot process request. Not enough resources.", 49918
    ),
    "4060 cannot open database": odbc(
        pyodbc.ProgrammingError,
        "42000",
        '[SQL Server]Cannot open database "scoring" requested by the login.',
        4060,
    ),
    "10928 resource limit": odbc(
        pyodbc.Error, "HY000", "[SQL Server]Resource ID : 1. The request limit is 60.", 10928
    ),
    "10929 min guarantee": odbc(
        pyodbc.Error, "HY000", "[SQL Server]Resource ID : 1. The min guarantee is 0.", 10929
    ),
    "communication link failure": odbc(
        pyodbc.OperationalError, "08S01", "Communication link failure", 0, "SQLExecDirectW"
    ),
    "connection reset (TCP Provider)": odbc(
        pyodbc.OperationalError,
        "08S01",
        "TCP Provider: Error code 0x68",
        104,
        "SQLExecDirectW",
    ),
    "login timeout": odbc(pyodbc.OperationalError, "HYT00", "Login timeout expired", 0),
    "1205 deadlock victim": odbc(
        pyodbc.Error,
        "40001",
        "[SQL Server]Transaction (Process ID 52) was deadlocked on lock resources with another "
        "process and has been chosen as the deadlock victim. Rerun the transaction.",
        1205,
        "SQLExecDirectW",
    ),
}
PERMANENT_MSSQL = {
    "duplicate key": odbc(
        pyodbc.IntegrityError,
        "23000",
        "[SQL Server]Violation of PRIMARY KEY constraint 'pk_readings'. Cannot insert "
        "duplicate key in object 'dbo.readings'.",
        2627,
        "SQLExecDirectW",
    ),
    "syntax": odbc(
        pyodbc.ProgrammingError,
        "42000",
        "[SQL Server]Incorrect syntax near 'FROM'.",
        102,
        "SQLExecDirectW",
    ),
    "permission": odbc(
        pyodbc.ProgrammingError,
        "42000",
        "[SQL Server]The SELECT permission was denied on the object 'readings'.",
        229,
        "SQLExecDirectW",
    ),
    "login failed": odbc(
        pyodbc.InterfaceError, "28000", "[SQL Server]Login failed for user '<token>'.", 18456
    ),
    "certificate": odbc(
        pyodbc.OperationalError,
        "08001",
        "SSL Provider: [error:0A000086:SSL routines::certificate verify failed]",
        -1,
    ),
}
TRANSIENT_PG = {
    "connection refused": psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        "Connection refused\n\tIs the server running on that host and accepting TCP/IP "
        "connections?"
    ),
    "starting up": psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        "FATAL:  the database system is starting up"
    ),
    "server closed": psycopg.OperationalError(
        "consuming input failed: server closed the connection unexpectedly"
    ),
    "57P01 admin shutdown": psycopg.errors.AdminShutdown(
        "terminating connection due to administrator command"
    ),
    "57P03 cannot connect now": psycopg.errors.CannotConnectNow("the database is starting up"),
    "08006 connection failure": psycopg.errors.lookup("08006")("connection failure"),
    "08001 cannot establish": psycopg.errors.lookup("08001")("could not establish"),
    "40P01 deadlock detected": psycopg.errors.DeadlockDetected("deadlock detected"),
    "40001 serialization failure": psycopg.errors.SerializationFailure("could not serialize"),
}
PERMANENT_PG = {
    "database missing": psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        'FATAL:  database "nosuch" does not exist'
    ),
    "password": psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        'FATAL:  password authentication failed for user "app"'
    ),
    "unique violation": psycopg.errors.UniqueViolation("duplicate key value"),
    "syntax": psycopg.errors.SyntaxError('syntax error at or near "FROM"'),
    "permission": psycopg.errors.InsufficientPrivilege("permission denied for table readings"),
}


def refused() -> psycopg.OperationalError:
    """A new error each call: a retry marks the error it gives up on."""
    return psycopg.OperationalError("connection failed: ... failed: Connection refused")


def wrapped(orig: Exception) -> sa.exc.DBAPIError:
    """SQLAlchemy's wrapper, as it raises it from an execute or a connect."""
    base = pyodbc.Error if type(orig).__module__ == "pyodbc" else psycopg.Error
    return sa.exc.DBAPIError.instance("SELECT 1", {}, orig, base)


@pytest.mark.parametrize("name", sorted(TRANSIENT_MSSQL))
def test_transient_sql_server_errors(name):
    exc = TRANSIENT_MSSQL[name]
    assert is_transient(exc)
    assert is_transient(wrapped(exc))


@pytest.mark.parametrize("name", sorted(PERMANENT_MSSQL))
def test_permanent_sql_server_errors(name):
    exc = PERMANENT_MSSQL[name]
    assert not is_transient(exc)
    assert not is_transient(wrapped(exc))


@pytest.mark.parametrize("name", sorted(TRANSIENT_PG))
def test_transient_postgresql_errors(name):
    exc = TRANSIENT_PG[name]
    assert is_transient(exc)
    assert is_transient(wrapped(exc))


@pytest.mark.parametrize("name", sorted(PERMANENT_PG))
def test_permanent_postgresql_errors(name):
    exc = PERMANENT_PG[name]
    assert not is_transient(exc)
    assert not is_transient(wrapped(exc))


def test_other_exceptions_are_not_transient():
    assert not is_transient(ValueError("40613"))
    assert not is_transient(sa.exc.NoSuchTableError("readings"))
    assert not is_transient(TimeoutError("pool exhausted"))


def test_error_code_names_the_native_number_or_sqlstate():
    assert error_code(wrapped(TRANSIENT_MSSQL["40613 serverless resuming"])) == "40613"
    assert error_code(TRANSIENT_MSSQL["communication link failure"]) == "08S01"
    assert error_code(TRANSIENT_PG["57P01 admin shutdown"]) == "57P01"


def test_disconnect_detected_by_sqlalchemy_is_transient():
    exc = wrapped(psycopg.InterfaceError("the connection is closed"))
    assert not is_transient(exc)
    exc.connection_invalidated = True
    assert is_transient(exc)


# ------------------------------------------------------------------ the retry loop itself


def test_unit_of_work_retries_transient_errors_and_logs_each(caplog):
    calls = []

    @with_sql_retry(seconds=20)
    def work(x):
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise wrapped(odbc(pyodbc.ProgrammingError, "42000", "not available", 40613))
        return x * 2

    with caplog.at_level(logging.WARNING, logger="shared.db.retry"):
        assert work(21) == 42
    assert len(calls) == 3
    retries = [r for r in caplog.records if r.name == "shared.db.retry"]
    assert [r.attempt for r in retries] == [1, 2]
    assert {r.error_class for r in retries} == {"pyodbc.ProgrammingError"}
    assert {r.error_code for r in retries} == {"40613"}
    assert all(r.levelno == logging.WARNING for r in retries)
    # Exponential backoff: ~0.5 s then ~1 s (+ up to 0.5 s jitter each).
    assert 0.5 <= calls[1] - calls[0] < 1.5
    assert 1.0 <= calls[2] - calls[1] < 2.0


@pytest.mark.parametrize("name", ["duplicate key", "syntax", "permission"])
def test_unit_of_work_raises_other_errors_at_once(name, caplog):
    calls = []
    error = wrapped(PERMANENT_MSSQL[name])

    def work():
        calls.append(1)
        raise error

    with pytest.raises(sa.exc.DBAPIError) as raised:
        call_with_sql_retry(work, seconds=20)
    assert raised.value is error
    assert calls == [1]
    assert not [r for r in caplog.records if r.name == "shared.db.retry"]


def test_retries_stop_within_the_bound():
    calls = []

    def work():
        calls.append(1)
        raise refused()

    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        call_with_sql_retry(work, seconds=3.0)
    elapsed = time.monotonic() - started
    # Waits of 0.5-1 s and 1-1.5 s fit in 3 s; a third (2-2.5 s) would not, so none starts.
    assert len(calls) == 3
    assert 1.5 <= elapsed <= 3.0


def test_an_enclosing_retry_does_not_start_over_when_connecting_gave_up():
    """The connect level used up SQL_RETRY_SECONDS: the unit of work around it raises at once
    instead of spending a second budget."""
    inner_calls = []

    def connect():
        inner_calls.append(1)
        raise refused()

    outer_calls = []

    def work():
        outer_calls.append(1)
        try:
            call_with_sql_retry(connect, seconds=1.6, operation="connect")
        except psycopg.OperationalError as exc:
            raise wrapped(exc) from exc

    with pytest.raises(sa.exc.OperationalError):
        call_with_sql_retry(work, seconds=20)
    assert outer_calls == [1]
    assert len(inner_calls) >= 2


def test_zero_seconds_turns_retries_off():
    calls = []

    def work():
        calls.append(1)
        raise refused()

    with pytest.raises(psycopg.OperationalError):
        call_with_sql_retry(work, seconds=0)
    assert calls == [1]


def test_retry_setting_is_read_and_validated():
    from shared.settings import SettingsError

    assert Settings.from_env({}).sql_retry_seconds == 90
    assert Settings.from_env({"SQL_RETRY_SECONDS": "0"}).sql_retry_seconds == 0
    with pytest.raises(SettingsError, match="SQL_RETRY_SECONDS"):
        Settings.from_env({"SQL_RETRY_SECONDS": "-1"})


# ------------------------------------------------------------------ a PostgreSQL restart


@pytest.fixture(scope="module")
def restartable_postgres():
    """A PostgreSQL server of this module's own: these tests stop and start it."""
    try:
        server = start_postgres()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not installed here ({exc}); run the test script")
    yield server
    server.stop()


def _fresh_database(server) -> str:
    return server.create_database("r_" + uuid.uuid4().hex[:12])


def _env(tmp_path, url: str, azurite) -> dict[str, str]:
    return {
        "DATA_DIR": str(tmp_path / "data"),
        "SQL_URL": url,
        "SQL_RETRY_SECONDS": "30",
        "ScoringStorage": azurite.connection_string,
        **unique_containers(),
    }


def _restart_after(server, seconds: float) -> threading.Thread:
    """Stop the server now; start it again after ``seconds`` in a thread."""
    server.stop(remove=False)
    thread = threading.Thread(target=lambda: (time.sleep(seconds), server.start()), daemon=True)
    thread.start()
    return thread


def _retry_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "shared.db.retry"]


T0 = "2026-01-01T00:00:0{}.123456Z"


def _batch(first: int, seq: int):
    body = [{"device": "d", "sensor": "s", "ts": T0.format(i), "value": 1.0} for i in (first,)]
    return [event(body, seq)]


def test_ingestion_rides_out_a_postgresql_restart(restartable_postgres, azurite, tmp_path, caplog):
    """The Event Hubs trigger, through shared.context's engine: the server goes down after a
    first batch and comes back 2 s later; the next batch waits for it instead of failing.

    Ingestion does not ping a connection it used a moment ago (one round trip saved per call):
    the statement finds it dead, the whole unit of work is retried once, and its new
    connection waits for the server through the connect retry."""
    settings = Settings.from_env(_env(tmp_path, _fresh_database(restartable_postgres), azurite))
    ctx = AppContext.create(settings)
    migrate.upgrade(ctx.engine)
    set_context(ctx)
    try:
        ingest = user_function("ingest_readings")
        ingest(_batch(1, 1))  # the pool now holds a connection that the restart will kill
        thread = _restart_after(restartable_postgres, 2.0)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="shared.db.retry"):
            ingest(_batch(2, 2))
        elapsed = time.monotonic() - started
        thread.join(60)
        with ctx.engine.connect() as conn:
            stored = conn.execute(sa.select(sa.func.count()).select_from(readings)).scalar()
    finally:
        set_context(None)
        ctx.engine.dispose()
    assert stored == 2
    assert elapsed >= 1.5  # it did wait for the server
    retries = _retry_records(caplog)
    assert retries, "no retry was logged"
    assert [r.sql_operation for r in retries[:1]] == ["insert readings"]
    connects = retries[1:]
    assert connects, "the new connection did not wait for the server"
    assert all(r.sql_operation == "connect" for r in connects)
    assert all(r.error_class.startswith("psycopg.") for r in retries)
    assert [r.attempt for r in connects] == list(range(1, len(connects) + 1))


def test_checkout_ping_is_skipped_only_for_trusted_recent_connections(postgres_server, monkeypatch):
    """Pooled connections are pinged on checkout (as pool_pre_ping did), and a dead one is
    replaced; inside trust_recent_connections() a connection used within TRUSTED_IDLE_SECONDS
    is not pinged, one idle longer still is. The pings are counted on the real dialect."""
    from shared.db import engine as engine_module

    url = fresh_postgres_url(postgres_server)
    engine = engine_module.engine_for_url(url)
    pings: list[int] = []
    real_ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda conn: pings.append(1) or real_ping(conn))

    def use() -> int:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()

    try:
        pid = use()
        assert pings == []  # a fresh connection is not pinged
        assert use() == pid and len(pings) == 1  # a pooled one is
        with engine_module.trust_recent_connections():
            assert use() == pid and len(pings) == 1  # used a moment ago: trusted
            monkeypatch.setattr(engine_module, "TRUSTED_IDLE_SECONDS", 0.0)
            assert use() == pid and len(pings) == 2  # idle "too long": pinged
        # A connection that died in the pool is found by the ping and replaced.
        admin = sa.create_engine(url)
        with admin.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        admin.dispose()
        assert use() != pid
        assert len(pings) == 3
    finally:
        engine.dispose()


def test_cli_rides_out_a_postgresql_restart(
    restartable_postgres, azurite, tmp_path, caplog, monkeypatch, capsys
):
    """The CLI (its first connection is the migration) started while the server is down."""
    from shared import cli

    env = _env(tmp_path, _fresh_database(restartable_postgres), azurite)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    thread = _restart_after(restartable_postgres, 2.0)
    with caplog.at_level(logging.WARNING, logger="shared.db.retry"):
        assert cli.main(["db", "upgrade"]) == 0
    thread.join(60)
    assert "database at revision" in capsys.readouterr().out
    assert _retry_records(caplog)


def test_permanent_connection_error_is_raised_at_once(
    restartable_postgres, azurite, tmp_path, caplog
):
    """A database that does not exist is not waited for, whatever SQL_RETRY_SECONDS says."""
    url = restartable_postgres.url("no_such_database")
    ctx = AppContext.create(Settings.from_env(_env(tmp_path, url, azurite)))
    set_context(ctx)
    started = time.monotonic()
    try:
        with pytest.raises(sa.exc.OperationalError, match="does not exist"):
            user_function("ingest_readings")(_batch(1, 1))
    finally:
        set_context(None)
        ctx.engine.dispose()
    assert time.monotonic() - started < 2
    assert not _retry_records(caplog)


def test_integrity_error_in_a_unit_of_work_is_raised_at_once(restartable_postgres, caplog):
    url = _fresh_database(restartable_postgres)
    ctx_engine = make_engine(Settings.from_env({"SQL_URL": url}))
    migrate.upgrade(ctx_engine)
    calls = []

    @with_sql_retry(seconds=30)
    def insert_twice():
        calls.append(1)
        row = {"ts": datetime(2026, 1, 1), "device": "d", "sensor": "s", "value": 1.0}
        with ctx_engine.begin() as conn:
            conn.execute(readings.insert(), [row, row])

    started = time.monotonic()
    with pytest.raises(sa.exc.IntegrityError):
        insert_twice()
    ctx_engine.dispose()
    assert calls == [1]
    assert time.monotonic() - started < 2
    assert not _retry_records(caplog)


def test_azure_sql_engine_retries_its_connect_with_the_token(caplog):
    """The Azure SQL engine: no SQL Server or Entra here, so the credential is a stand-in and
    pyodbc's connect is replaced by one that answers as a resuming serverless database twice
    (40613), then stops the test with a sentinel. Each attempt carries the access token that
    the token listener put in the connect parameters, and each retry is logged."""
    from shared.db.engine import SQL_COPT_SS_ACCESS_TOKEN, azure_sql_engine

    class Credential:
        def get_token(self, scope):
            return type("Token", (), {"token": "t0ken"})()

    class Reached(Exception):
        pass

    attempts = []

    def connect(*cargs, **cparams):
        attempts.append(cparams.get("attrs_before", {}))
        if len(attempts) <= 2:
            raise odbc(pyodbc.ProgrammingError, "42000", "not currently available", 40613)
        raise Reached

    engine = azure_sql_engine("srv.database.windows.net", "db", Credential(), retry_seconds=30)
    engine.dialect.connect = connect
    with caplog.at_level(logging.WARNING, logger="shared.db.retry"), pytest.raises(Reached):
        engine.connect()
    assert len(attempts) == 3
    assert all(SQL_COPT_SS_ACCESS_TOKEN in attrs for attrs in attempts)
    retries = _retry_records(caplog)
    assert [(r.attempt, r.error_code) for r in retries] == [(1, "40613"), (2, "40613")]
