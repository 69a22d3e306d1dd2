"""SQL: schema, engines, dialect-specific constructs, migrations and the statements the app runs."""

from shared.db.engine import make_engine
from shared.db.retry import is_transient, with_sql_retry
from shared.db.schema import metadata

__all__ = ["is_transient", "make_engine", "metadata", "with_sql_retry"]
