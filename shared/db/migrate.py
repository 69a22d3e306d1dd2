"""Applying the Alembic migrations, from code (the CLI's ``db upgrade`` and the tests).

``alembic.ini`` at the repository root points at the same scripts for people who prefer the
``alembic`` command; both take the database from the app's settings unless given a URL.
"""

from __future__ import annotations

import io
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from shared.db.retry import call_with_sql_retry
from shared.settings import DEFAULT_SQL_RETRY_SECONDS

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(
    engine: Engine | None = None, url: str | None = None, bucket_seconds: int | None = None
) -> Config:
    """An Alembic config for our scripts, bound to ``engine`` (online) or ``url`` (offline).

    ``bucket_seconds`` is the width migration 0004 backfills bucket aggregates at (default: the
    settings' ``BUCKET_SECONDS``, read by ``env.py``).
    """
    config = Config()
    if bucket_seconds is not None:
        config.attributes["bucket_seconds"] = int(bucket_seconds)
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url)
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def upgrade(
    engine: Engine,
    revision: str = "head",
    retry_seconds: float = DEFAULT_SQL_RETRY_SECONDS,
    bucket_seconds: int | None = None,
) -> None:
    """Bring the database behind ``engine`` up to ``revision`` (idempotent).

    Retried as a whole on transient SQL errors (a failover mid-upgrade): on PostgreSQL and
    SQL Server the upgrade runs in one transaction, so a failed attempt leaves nothing behind.
    """
    call_with_sql_retry(
        lambda: command.upgrade(alembic_config(engine, bucket_seconds=bucket_seconds), revision),
        retry_seconds,
        "migration",
    )


def offline_sql(url: str, revision: str = "head", bucket_seconds: int | None = None) -> str:
    """The migration as a SQL script for the dialect of ``url`` (``alembic upgrade --sql``)."""
    buffer = io.StringIO()
    config = alembic_config(url=url, bucket_seconds=bucket_seconds)
    config.output_buffer = buffer
    command.upgrade(config, revision, sql=True)
    return buffer.getvalue()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
