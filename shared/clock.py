"""The app's clock: naive UTC, the storage convention for every timestamp."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, in UTC, without tzinfo (as stored in SQL)."""
    return datetime.now(UTC).replace(tzinfo=None)


def parse_utc(text: str) -> datetime:
    """An ISO-8601 timestamp as naive UTC: offsets are converted, naive values taken as UTC.

    Raises ``ValueError`` for anything else; callers turn it into their own error.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected an ISO-8601 string, got {type(text).__name__}")
    ts = datetime.fromisoformat(text[:-1] if text.endswith("Z") else text)
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts
