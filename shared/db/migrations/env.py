"""Alembic environment: online against the app's engine, offline (--sql) for any dialect URL."""

from __future__ import annotations

from alembic import context

from shared.db.schema import metadata

config = context.config


def _run_offline() -> None:
    from sqlalchemy.engine import make_url

    from shared.db.dialects import MSSQL_DIALECT_OPTIONS, as_connected_to_azure_sql

    url = make_url(config.get_main_option("sqlalchemy.url"))
    context.configure(
        url=url,
        dialect_opts=MSSQL_DIALECT_OPTIONS if url.get_backend_name() == "mssql" else {},
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=False,
    )
    # Offline, the dialect never connects, so nothing sets what the online upgrade's dialect
    # learns from the server (SQL Server: VARCHAR(max) instead of TEXT): set it as Azure SQL's.
    as_connected_to_azure_sql(context.get_context().dialect)
    with context.begin_transaction():
        context.run_migrations()


def _engine():
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    url = config.get_main_option("sqlalchemy.url")
    from shared.db.engine import engine_for_url, make_engine

    if url:
        return engine_for_url(url)
    from shared.settings import Settings

    return make_engine(Settings.from_env())


def _run_online() -> None:
    engine = _engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if "bucket_seconds" not in config.attributes:
    # Migration 0004 backfills bucket aggregates at the app's BUCKET_SECONDS (the `alembic`
    # command and callers that do not pass it read it from the settings, like the app does).
    from shared.settings import Settings

    config.attributes["bucket_seconds"] = Settings.from_env().bucket_seconds

if context.is_offline_mode():
    _run_offline()
else:
    _run_online()
