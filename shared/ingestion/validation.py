"""Validating one reading: ``{"device": str, "sensor": str, "ts": ISO-8601, "value": number}``.

Ids become blob path segments and SQL keys, so they are bounded (``ID_LENGTH``) and limited to a
safe character set. Timestamps must parse, are taken as UTC when naive, and must fall within sane
bounds (not before 2000, not more than a day in the future). Values must be finite numbers
(booleans are rejected even though Python treats them as ints).

The hot path validates ~10^5 readings a second, so ids already seen are remembered and the
timestamp parser is the C ``datetime.fromisoformat``; :func:`reading_validator` accepts the
common reading (known ids, a timestamp already parsed, a finite float) in a few type checks and
dict lookups, and hands anything else to :func:`validate_reading` for the full checks and reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from shared.clock import parse_utc
from shared.db.schema import ID_LENGTH

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
EARLIEST = datetime(2000, 1, 1)
FUTURE_TOLERANCE = timedelta(days=1)


class Reading(NamedTuple):
    """A valid reading; ``ts`` is naive UTC (the storage convention)."""

    ts: datetime
    device: str
    sensor: str
    value: float


class InvalidReading(ValueError):
    """A reading that cannot be stored; the message is the reason recorded in the dead letter."""


_valid_ids: set[str] = set()


def check_id(kind: str, value: Any) -> str:
    # The type first: a list or dict is unhashable (the set lookup would raise TypeError).
    if not isinstance(value, str):
        raise InvalidReading(f"{kind} must be a string, got {type(value).__name__}")
    if value in _valid_ids:
        return value
    if not value:
        raise InvalidReading(f"{kind} is empty")
    if len(value) > ID_LENGTH:
        raise InvalidReading(f"{kind} is longer than {ID_LENGTH} characters")
    if ID_PATTERN.fullmatch(value) is None:
        raise InvalidReading(
            f"{kind} {value!r} has characters outside letters, digits, '_', '.', '-' "
            "(or does not start with a letter or digit)"
        )
    if len(_valid_ids) < 1_000_000:
        _valid_ids.add(value)
    return value


# Readings of many sensors share timestamps: parse each distinct string once.
_parsed: dict[str, datetime] = {}


def _parse_iso(value: Any) -> datetime:
    if not isinstance(value, str):
        raise InvalidReading(f"ts must be an ISO-8601 string, got {type(value).__name__}")
    try:
        return parse_utc(value)
    except ValueError as exc:
        shown = repr(value[:64]) + ("..." if len(value) > 64 else "")
        if "outside the years" in str(exc):
            raise InvalidReading(f"ts {shown} is outside the years 1-9999 in UTC") from None
        raise InvalidReading(f"ts {shown} is not an ISO-8601 timestamp") from None


def parse_ts(value: Any, now: datetime | None = None) -> datetime:
    """Parse an ISO-8601 timestamp into naive UTC, within sane bounds."""
    ts = _parsed.get(value) if isinstance(value, str) else None
    if ts is None:
        ts = _parse_iso(value)
        if len(_parsed) >= 100_000:
            _parsed.clear()
        _parsed[value] = ts
    if ts < EARLIEST:
        raise InvalidReading(f"ts {value!r} is before {EARLIEST:%Y-%m-%d}")
    latest = (now or datetime.now(UTC).replace(tzinfo=None)) + FUTURE_TOLERANCE
    if ts > latest:
        raise InvalidReading(f"ts {value!r} is more than a day in the future")
    return ts


def check_value(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidReading(f"value must be a number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise InvalidReading("value is too large for a 64-bit float") from None
    if not math.isfinite(value):
        raise InvalidReading("value is not finite")
    return value


def validate_reading(item: Any, now: datetime | None = None) -> Reading:
    """A :class:`Reading` from a decoded JSON object, or :class:`InvalidReading` with the reason."""
    try:
        return Reading(
            parse_ts(item["ts"], now),
            check_id("device", item["device"]),
            check_id("sensor", item["sensor"]),
            check_value(item["value"]),
        )
    except (KeyError, TypeError):
        if not isinstance(item, dict):
            raise InvalidReading(
                f"a reading must be a JSON object, got {type(item).__name__}"
            ) from None
        missing = [k for k in ("device", "sensor", "ts", "value") if k not in item]
        if not missing:  # every field is there: say which value was of the wrong kind
            raise InvalidReading("a field has a value of the wrong type") from None
        raise InvalidReading(f"missing field(s): {', '.join(missing)}") from None


def reading_validator(now: datetime | None = None) -> Callable[[Any], Reading]:
    """:func:`validate_reading` for many items at one ``now``, with a fast path.

    An item whose ids were validated before, whose timestamp string was parsed before and whose
    value is a finite float passes with type checks and lookups (the same bounds as
    :func:`parse_ts`); anything else goes through :func:`validate_reading`, which accepts it or
    raises :class:`InvalidReading` with the reason. So both accept exactly the same items.
    """
    now = now or datetime.now(UTC).replace(tzinfo=None)
    latest = now + FUTURE_TOLERANCE
    parsed = _parsed
    known = _valid_ids

    def validate(item: Any) -> Reading:
        if type(item) is dict:
            text = item.get("ts")
            device = item.get("device")
            sensor = item.get("sensor")
            value = item.get("value")
            if (
                type(text) is str
                and type(device) is str
                and type(sensor) is str
                and type(value) is float
                and value - value == 0.0  # finite: inf - inf and nan - nan are nan
                and device in known
                and sensor in known
            ):
                ts = parsed.get(text)
                if ts is not None and EARLIEST <= ts <= latest:
                    return Reading(ts, device, sensor, value)
        return validate_reading(item, now)

    return validate
