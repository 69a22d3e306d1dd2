"""The app's clock: naive UTC, the storage convention for every timestamp."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, in UTC, without tzinfo (as stored in SQL)."""
    return datetime.now(UTC).replace(tzinfo=None)


def parse_utc(text: str) -> datetime:
    """An ISO-8601 timestamp as naive UTC: offsets are converted, naive values taken as UTC.

    Raises ``ValueError`` for anything else, including a time whose UTC equivalent lies outside
    the years 1-9999 (``0001-01-01T00:00:00+01:00``: Python raises ``OverflowError`` converting
    it); callers turn it into their own error.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected an ISO-8601 string, got {type(text).__name__}")
    ts = datetime.fromisoformat(text[:-1] if text.endswith("Z") else text)
    if ts.tzinfo is not None:
        try:
            ts = ts.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            raise ValueError(f"{text!r} is outside the years 1-9999 in UTC") from None
    return ts
