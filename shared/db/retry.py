"""Riding out transient SQL failures: Azure SQL resuming from auto-pause, failing over or
throttling connections; a PostgreSQL server restarting.

One classification, :func:`is_transient`, used at two levels:

* **Connections.** Every engine the app makes (:func:`shared.db.engine.make_engine`) opens its
  DBAPI connections through :func:`install_connect_retry`, a ``do_connect`` listener. So whatever
  opens a connection (a trigger through ``shared.context``, the CLI, the local runner, Alembic)
  waits for a paused serverless database to resume instead of failing on its first attempt, and
  the pool's pre-ping replaces a connection that died while idle the same way.
* **Units of work.** :func:`with_sql_retry` re-runs a whole function when a transient error hits
  after connecting (a failover in the middle of a transaction). Only for work that is safe to
  redo; every write in this app is (keyed inserts, chunk recording that replaces the chunk's
  rows, runs unique on their run key).

Deadlock victims (PostgreSQL 40P01, SQL Server 1205) and serialization failures count as
transient: the database rolled the transaction back and asks for it to be rerun.

Both back off exponentially with jitter, stop after a bounded total time (``SQL_RETRY_SECONDS``),
and log a warning for each retry naming the error class, its code and the attempt. Everything
else (integrity, syntax, permission, a missing database, a bad password) is raised at once.
When the connection level has used up its time, the unit-of-work level does not start over.

Built on tenacity (imported on first use, off the cold-start path); drivers are recognised by
module, so neither pyodbc nor psycopg is imported here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError

from shared.settings import DEFAULT_SQL_RETRY_SECONDS

if TYPE_CHECKING:
    import tenacity

log = logging.getLogger(__name__)

T = TypeVar("T")

# SQL Server / Azure SQL native error numbers that a retry can outlast (Microsoft's transient
# error lists for Azure SQL and SqlClient's retry logic), and the deadlock victim: its
# transaction was rolled back and "Rerun the transaction" is the documented remedy; every unit
# of work retried here is safe to redo.
TRANSIENT_MSSQL_ERRORS = frozenset(
    {
        1205,  # chosen as the deadlock victim: rerun the transaction
        64,  # connection lost during login
        233,  # connection initialisation failed before login
        4060,  # cannot open database (still resuming / failing over)
        4221,  # login to read-secondary failed: replica not ready
        10053,  # transport-level error: connection aborted
        10054,  # transport-level error: connection reset by peer
        10060,  # network error: connection timed out
        10928,  # resource limit reached (sessions / workers)
        10929,  # resource minimum guarantee not available
        40143,  # the service encountered an error processing the request
        40197,  # the service encountered an error (reconfiguration, failover)
        40501,  # the service is busy
        40540,  # the service encountered an error
        40613,  # database not currently available (serverless resuming from auto-pause)
        42108,  # cannot connect to the SQL pool since it is paused
        42109,  # the SQL pool is warming up
        49918,  # not enough resources to process the request
        49919,  # too many create or update operations in progress
        49920,  # too many operations in progress
    }
)
# ODBC SQLSTATE 08S01: communication link failure (the connection dropped).
_MSSQL_TRANSIENT_SQLSTATES = frozenset({"08S01"})
_MSSQL_TRANSIENT_TEXT = (
    "communication link failure",
    "tcp provider",
    "login timeout expired",
    "connection reset",
    "connection is broken",
)
# The native error number pyodbc prints after each diagnostic record: "... (40613) (SQLDriver…".
_MSSQL_NATIVE = re.compile(r"\((\d+)\)\s*(?=\(SQL\w*\)|;|$)")

# PostgreSQL SQLSTATEs: admin_shutdown, crash_shutdown, cannot_connect_now (starting up);
# deadlock_detected and serialization_failure (the transaction was rolled back: rerun it);
# class 08 is connection_exception.
_PG_TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "40P01", "40001"})
# libpq reports connection failures with no SQLSTATE (psycopg's ``sqlstate`` is None), whatever
# the cause: these texts are the transient ones ("database does not exist" or "password
# authentication failed" are not).
_PG_TRANSIENT_TEXT = (
    "connection refused",
    "server closed the connection",
    "could not connect to server",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "terminating connection",
    "timeout expired",
    "connection timed out",
    "connection reset",
    "connection is lost",
    "consuming input failed",
    "ssl syscall error",
    "eof detected",
    "no connection to the server",
)

_EXHAUSTED = "_sql_retry_exhausted"


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a SQL failure that waiting and trying again can outlast.

    Takes a driver's exception (``pyodbc.Error``, ``psycopg.Error``) or SQLAlchemy's wrapper of
    one (``DBAPIError``, whose ``orig`` it inspects).
    """
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:  # SQLAlchemy's own disconnect detection said so
            return True
        exc = exc.orig
    if not isinstance(exc, Exception):
        return False
    driver = type(exc).__module__.split(".", 1)[0]
    if driver == "pyodbc":
        return _mssql_transient(exc)
    if driver in ("psycopg", "psycopg2"):
        return _postgresql_transient(exc)
    return False


def _mssql_transient(exc: Exception) -> bool:
    sqlstate, message = _pyodbc_parts(exc)
    if sqlstate in _MSSQL_TRANSIENT_SQLSTATES:
        return True
    if any(int(n) in TRANSIENT_MSSQL_ERRORS for n in _MSSQL_NATIVE.findall(message)):
        return True
    lowered = message.lower()
    return any(text in lowered for text in _MSSQL_TRANSIENT_TEXT)


def _pyodbc_parts(exc: Exception) -> tuple[str, str]:
    """(SQLSTATE, message) of a pyodbc error: its args are ``(sqlstate, message)``."""
    args = [str(a) for a in exc.args]
    if len(args) >= 2:
        return args[0], " ".join(args[1:])
    return "", " ".join(args)


def _postgresql_transient(exc: Exception) -> bool:
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if sqlstate:
        return sqlstate in _PG_TRANSIENT_SQLSTATES or sqlstate.startswith("08")
    if type(exc).__name__ != "OperationalError":
        return False
    lowered = str(exc).lower()
    return any(text in lowered for text in _PG_TRANSIENT_TEXT)


def error_code(exc: BaseException) -> str | None:
    """The driver's code for ``exc``: SQL Server's native number(s) or the SQLSTATE."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if type(orig).__module__.split(".", 1)[0] == "pyodbc":
        sqlstate, message = _pyodbc_parts(orig)
        numbers = [n for n in _MSSQL_NATIVE.findall(message) if n != "0"]
        return ",".join(numbers) or sqlstate or None
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def error_class(exc: BaseException) -> str:
    """``module.Class`` of the driver's exception (of SQLAlchemy's wrapper's ``orig``)."""
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    kind = type(orig)
    return f"{kind.__module__}.{kind.__qualname__}"


def _exhausted(exc: BaseException) -> bool:
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    return getattr(exc, _EXHAUSTED, False) or getattr(orig, _EXHAUSTED, False)


def _should_retry(exc: BaseException) -> bool:
    return is_transient(exc) and not _exhausted(exc)


def _log_retry(operation: str, state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning(
        "SQL %s failed with a transient %s (attempt %d); retrying in %.1f s",
        operation,
        error_class(exc),
        state.attempt_number,
        wait,
        extra={
            "sql_operation": operation,
            "error_class": error_class(exc),
            "error_code": error_code(exc),
            "attempt": state.attempt_number,
            "retry_in_seconds": round(wait, 2),
            "elapsed_seconds": round(state.seconds_since_start, 2),
            "error": str(exc)[:500],
        },
    )


def call_with_sql_retry(
    fn: Callable[[], T],
    seconds: float = DEFAULT_SQL_RETRY_SECONDS,
    operation: str = "work",
    max_wait: float = 10.0,
) -> T:
    """``fn()``, retried on transient SQL errors with exponential backoff for up to ``seconds``.

    The first retry waits ~0.5 s, then 1, 2, 4 ... up to ``max_wait`` s, plus up to 0.5 s of
    jitter (so many instances resuming together do not retry in lockstep). No retry starts
    that would end past ``seconds``. The last error is raised as is; if it was transient it
    is marked so that an enclosing retry does not spend another full budget on it.
    """
    if seconds <= 0:
        return fn()
    import tenacity  # here, not at module level: kept off the Functions cold-start import path

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_should_retry),
        stop=tenacity.stop_before_delay(seconds),
        wait=tenacity.wait_exponential(multiplier=0.5, max=max_wait) + tenacity.wait_random(0, 0.5),
        before_sleep=functools.partial(_log_retry, operation),
        reraise=True,
    )
    try:
        return retrying(fn)
    except Exception as exc:
        if is_transient(exc):
            for target in (exc, getattr(exc, "orig", None)):
                with contextlib.suppress(AttributeError, TypeError):  # None, or no __dict__
                    setattr(target, _EXHAUSTED, True)
        raise


def with_sql_retry(
    fn: Callable[..., T] | None = None,
    *,
    seconds: float = DEFAULT_SQL_RETRY_SECONDS,
    operation: str | None = None,
) -> Any:
    """Decorator: re-run a unit of work that is safe to redo when it fails transiently.

    ``@with_sql_retry`` or ``@with_sql_retry(seconds=30)``. The function must open its own
    connection or transaction (``with engine.begin()``) inside, so that a retry starts clean.
    """

    def decorate(func: Callable[..., T]) -> Callable[..., T]:
        name = operation or func.__qualname__

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            return call_with_sql_retry(lambda: func(*args, **kwargs), seconds, name)

        return wrapper

    return decorate(fn) if fn is not None else decorate


def install_connect_retry(engine: Engine, seconds: float) -> None:
    """Make every new DBAPI connection of ``engine`` retry transient failures for ``seconds``.

    A ``do_connect`` listener that connects itself; listeners registered before it (the Azure
    SQL access token) have already put their parameters in ``cparams``.
    """
    if seconds <= 0:
        return

    @event.listens_for(engine, "do_connect")
    def _connect(dialect, _connection_record, cargs, cparams):
        return call_with_sql_retry(lambda: dialect.connect(*cargs, **cparams), seconds, "connect")
