"""Test fixtures: real Azurite and PostgreSQL servers on loopback, SQLite files, and a check
that every statement the app sends to SQL also compiles for SQL Server (``mssql+pyodbc``).

Servers start once per session in temporary folders and are stopped by PID at the end. Each
test gets its own database (a fresh SQLite file, or a fresh PostgreSQL database) and its own
blob containers, so tests never see each other's data.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite

from shared.context import AppContext, set_context
from shared.db import migrate
from shared.db.dialects import insert_if_absent, mssql_dialect
from shared.db.engine import engine_for_url
from shared.local.azurite import start_azurite
from shared.local.postgres import start_postgres
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
NAB = ROOT.parent / "shared" / "data" / "nab"
# As the app's engines have it once connected to Azure SQL (VARCHAR(max), not TEXT).
MSSQL = mssql_dialect()
INVALID_TSQL_IS = re.compile(r"\bIS\s+(?:NOT\s+)?[01]\b")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    server = start_azurite(tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    try:
        server = start_postgres()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not installed here ({exc}); run the test script to install it")
    yield server
    server.stop()


def fresh_postgres_url(server) -> str:
    return server.create_database("t_" + uuid.uuid4().hex[:12])


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request, tmp_path):
    """A fresh, empty database on each engine the app runs on here."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'scoring.db'}"
    return fresh_postgres_url(request.getfixturevalue("postgres_server"))


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'scoring.db'}"


def unique_containers() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {
        "MODELS_CONTAINER": f"models-{tag}",
        "CHUNKS_CONTAINER": f"chunks-{tag}",
        "PREDICTIONS_CONTAINER": f"predictions-{tag}",
        "DEADLETTER_CONTAINER": f"deadletters-{tag}",
        "REPORTS_CONTAINER": f"reports-{tag}",
        "RUNS_QUEUE": f"run-requests-{tag}",
    }


@pytest.fixture
def env(tmp_path, sql_url, azurite) -> dict[str, str]:
    """App settings for one test: its own database and containers, Azurite storage."""
    return {
        "DATA_DIR": str(tmp_path / "data"),
        "SQL_URL": sql_url,
        "ScoringStorage": azurite.connection_string,
        "LOCAL_WORKERS": "2",
        **unique_containers(),
    }


class MssqlCompileCheck:
    """Compiles every statement an engine executes for SQL Server; records failures."""

    def __init__(self):
        self.compiled: list[str] = []
        self.failures: list[str] = []

    def attach(self, engine: sa.Engine) -> None:
        event.listen(engine, "before_execute", self._before_execute)

    def _before_execute(self, conn, clauseelement, multiparams, params, execution_options):
        if not isinstance(clauseelement, sa.sql.ClauseElement):
            return
        try:
            sql = str(mssql_equivalent(clauseelement).compile(dialect=MSSQL))
        except Exception as exc:  # noqa: BLE001 - every failure is reported by the test
            self.failures.append(f"{clauseelement!s:.300}\n  -> {type(exc).__name__}: {exc}")
            return
        self.compiled.append(sql)
        # Compiles, yet SQL Server refuses it: `col.is_(True)` renders `col IS 1` for mssql
        # (T-SQL only has IS [NOT] NULL); compare booleans with `== true()`.
        if INVALID_TSQL_IS.search(sql):
            self.failures.append(f"{sql:.300}\n  -> `IS 1`/`IS 0` is not T-SQL")


def mssql_equivalent(statement):
    """The statement the app would send on SQL Server.

    Only the insert-if-absent construct differs by dialect: the app builds it with
    ``insert_if_absent(table, keys, dialect)``, so its SQLite/PostgreSQL form is swapped for the
    one the same call makes for mssql.
    """
    if (
        isinstance(statement, (sqlite.Insert, postgresql.Insert))
        and statement._post_values_clause is not None
    ):
        keys = [
            c if isinstance(c, str) else c.name
            for c in statement._post_values_clause.inferred_target_elements
        ]
        return insert_if_absent(statement.table, keys, "mssql")
    return statement


@pytest.fixture
def mssql_check():
    check = MssqlCompileCheck()
    yield check
    assert not check.failures, "statements that do not compile for SQL Server:\n" + "\n".join(
        check.failures
    )


@pytest.fixture
def settings(env) -> Settings:
    return Settings.from_env(env)


@pytest.fixture
def ctx(settings, mssql_check):
    """An app context on a migrated database and Azurite; installed for the trigger functions."""
    engine = engine_for_url(settings.sql_url)
    migrate.upgrade(engine, bucket_seconds=settings.bucket_seconds)
    mssql_check.attach(engine)
    from shared.blobs import BlobStore

    context = AppContext(settings, engine, BlobStore.from_settings(settings))
    set_context(context)
    yield context
    set_context(None)
    engine.dispose()
