"""The app's clock: naive UTC, the storage convention for every timestamp."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, in UTC, without tzinfo (as stored in SQL)."""
    return datetime.now(UTC).replace(tzinfo=None)
