"""SQL: schema, engines, dialect-specific constructs, migrations and the statements the app runs."""

from shared.db.engine import make_engine
from shared.db.schema import metadata

__all__ = ["make_engine", "metadata"]
