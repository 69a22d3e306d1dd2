"""Alert rules: which anomaly events notify, kept in SQL (``alert_rules``).

A rule has a scope: the fleet, one device, or one sensor (``device``/``sensor``), and its id is
derived from the scope, so setting a rule again updates it. A sensor's **effective rule** is the
fleet rule, overlaid by its device's rule, then by its own: each field set (not null) in a more
specific rule wins. Fields:

``min_score``
    The event's peak score must reach it (default: the fleet sensitivity, ``SENSITIVITY``,
    which every event reaches: with no rule, every event alerts).
``min_duration_minutes``
    The event's span (``end - start``) must reach it; a short event that grows past it is
    alerted then (its ``opened`` notification comes late, never twice).
``quiet_start``/``quiet_end``
    ``HH:MM`` in UTC: events whose onset falls in ``[quiet_start, quiet_end)`` (wrapping midnight
    when start > end) are not alerted. Judged on the onset, not on the clock when a run records
    it, so a catch-up run decides as the on-time one would have.
``muted_until``
    While the clock is before it, the scope gets no notification at all (opened, updated or
    closed); after it, events changing again notify as usual. A mute expires by itself.

Rules gate an event's ``opened`` notification; once an event was announced, its updates and its
closing follow (so a receiver never holds an incident open forever), except during a mute.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from datetime import datetime, time, timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from shared.clock import utcnow
from shared.db.schema import alert_rules

FLEET, DEVICE, SENSOR = "fleet", "device", "sensor"
SCOPES = (FLEET, DEVICE, SENSOR)
RULE_FIELDS = (
    "min_score",
    "min_duration_minutes",
    "quiet_start",
    "quiet_end",
    "muted_until",
    "mute_reason",
    "comment",
)
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class RuleError(ValueError):
    """An invalid rule; the message says which field and why."""


@dataclass(frozen=True)
class AlertRule:
    rule_id: str
    scope: str
    device: str | None = None
    sensor: str | None = None
    min_score: float | None = None
    min_duration_minutes: float | None = None
    quiet_start: str | None = None
    quiet_end: str | None = None
    muted_until: datetime | None = None
    mute_reason: str | None = None
    comment: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat() + "Z"
        return out


@dataclass(frozen=True)
class EffectiveRule:
    """The fields that decide one sensor's alerts, after overlaying its rules."""

    min_score: float
    min_duration_minutes: float = 0.0
    quiet_start: str | None = None
    quiet_end: str | None = None
    muted_until: datetime | None = None

    def muted(self, now: datetime) -> bool:
        return self.muted_until is not None and now < self.muted_until

    def in_quiet_hours(self, onset: datetime) -> bool:
        if not self.quiet_start or not self.quiet_end:
            return False
        start, end, at = _hhmm(self.quiet_start), _hhmm(self.quiet_end), onset.time()
        if start <= end:
            return start <= at < end
        return at >= start or at < end  # wraps midnight

    def why_not(self, event, now: datetime) -> str | None:
        """Why ``event`` (an AnomalyEvent) must not be announced now; ``None``: it may."""
        if self.muted(now):
            return f"muted until {self.muted_until:%Y-%m-%d %H:%M}Z"
        if event.peak_score < self.min_score:
            return f"peak score {event.peak_score:.3f} below {self.min_score:g}"
        minutes = (event.end - event.start).total_seconds() / 60
        if minutes < self.min_duration_minutes:
            return f"lasted {minutes:g} min, below {self.min_duration_minutes:g}"
        if self.in_quiet_hours(event.start):
            return f"onset in quiet hours {self.quiet_start}-{self.quiet_end} UTC"
        return None


def _hhmm(value: str) -> time:
    match = _HHMM.match(value)
    if match is None:
        raise RuleError(f"{value!r} is not a time of day HH:MM (UTC)")
    return time(int(match.group(1)), int(match.group(2)))


def rule_id_for(device: str | None = None, sensor: str | None = None) -> str:
    """The id of the rule of a scope: ``fleet``, or a hash of the device (and sensor)."""
    if sensor is not None and device is None:
        raise RuleError("a sensor rule needs its device")
    if device is None:
        return FLEET
    key = f"{device}\x1f{sensor or ''}"
    prefix = "sensor-" if sensor is not None else "device-"
    return prefix + hashlib.sha256(key.encode()).hexdigest()[:20]


def _row(row) -> AlertRule:
    return AlertRule(**{k: row._mapping[k] for k in AlertRule.__dataclass_fields__})


def list_rules(conn: Connection) -> list[AlertRule]:
    rows = conn.execute(
        select(alert_rules).order_by(
            alert_rules.c.scope, alert_rules.c.device, alert_rules.c.sensor
        )
    )
    return [_row(r) for r in rows]


def get_rule(conn: Connection, rule_id: str) -> AlertRule | None:
    row = conn.execute(select(alert_rules).where(alert_rules.c.rule_id == rule_id)).one_or_none()
    return _row(row) if row else None


def validate_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Check a rule's fields (the keys of :data:`RULE_FIELDS`); returns them normalised."""
    unknown = sorted(set(fields) - set(RULE_FIELDS))
    if unknown:
        raise RuleError(f"unknown rule field(s): {', '.join(unknown)}")
    out = dict(fields)
    score = out.get("min_score")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
            raise RuleError("min_score must be a number between 0 and 1")
        out["min_score"] = float(score)
    minutes = out.get("min_duration_minutes")
    if minutes is not None:
        if (
            isinstance(minutes, bool)
            or not isinstance(minutes, (int, float))
            or not 0 <= minutes <= 7 * 24 * 60
        ):
            raise RuleError("min_duration_minutes must be a number between 0 and 10080 (a week)")
        out["min_duration_minutes"] = float(minutes)
    quiet = [out.get("quiet_start"), out.get("quiet_end")]
    if ("quiet_start" in out or "quiet_end" in out) and (quiet[0] is None) != (quiet[1] is None):
        raise RuleError("quiet_start and quiet_end go together (both HH:MM UTC, or both null)")
    for name in ("quiet_start", "quiet_end"):
        if out.get(name) is not None:
            if not isinstance(out[name], str):
                raise RuleError(f"{name} must be a string HH:MM (UTC)")
            try:
                _hhmm(out[name])
            except RuleError as exc:
                raise RuleError(f"{name}: {exc}") from None
    if quiet[0] is not None and quiet[0] == quiet[1]:
        raise RuleError("quiet_start and quiet_end must differ")
    muted = out.get("muted_until")
    if muted is not None and not isinstance(muted, datetime):
        raise RuleError("muted_until must be a time")
    for name in ("mute_reason", "comment"):
        value = out.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 500):
            raise RuleError(f"{name} must be a string of at most 500 characters")
        if value is not None and not storable(value):
            raise RuleError(f"{name} holds a NUL character or is not valid Unicode")
    return out


def storable(text: str) -> bool:
    """Whether every database can hold ``text``: no NUL (PostgreSQL refuses it), encodable as
    UTF-8 (no lone surrogate)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def set_rule(
    conn: Connection,
    device: str | None = None,
    sensor: str | None = None,
    now: datetime | None = None,
    **fields: Any,
) -> AlertRule:
    """Create or update the rule of a scope with ``fields`` (others kept); returns it."""
    fields = validate_fields(fields)
    now = now or utcnow()
    rule_id = rule_id_for(device, sensor)
    scope = FLEET if device is None else (DEVICE if sensor is None else SENSOR)
    if get_rule(conn, rule_id) is None:
        conn.execute(
            insert(alert_rules).values(
                rule_id=rule_id,
                scope=scope,
                device=device,
                sensor=sensor,
                created_at=now,
                updated_at=now,
                **{name: fields.get(name) for name in RULE_FIELDS},
            )
        )
    elif fields:
        conn.execute(
            update(alert_rules)
            .where(alert_rules.c.rule_id == rule_id)
            .values(updated_at=now, **fields)
        )
    return get_rule(conn, rule_id)


def mute(
    conn: Connection,
    device: str | None,
    sensor: str | None,
    until: datetime,
    reason: str | None = None,
    now: datetime | None = None,
) -> AlertRule:
    """Mute a scope until ``until`` (a mute expires by itself)."""
    return set_rule(conn, device, sensor, now, muted_until=until, mute_reason=reason)


def unmute(conn: Connection, device: str | None, sensor: str | None) -> AlertRule | None:
    rule_id = rule_id_for(device, sensor)
    if get_rule(conn, rule_id) is None:
        return None
    return set_rule(conn, device, sensor, muted_until=None, mute_reason=None)


def delete_rule(conn: Connection, rule_id: str) -> bool:
    return conn.execute(delete(alert_rules).where(alert_rules.c.rule_id == rule_id)).rowcount > 0


class RuleBook:
    """Every rule, loaded once (rules are few), answering the effective rule of a sensor."""

    def __init__(self, rules: list[AlertRule], default_min_score: float):
        self.default_min_score = default_min_score
        self.fleet = next((r for r in rules if r.scope == FLEET), None)
        self.devices = {r.device: r for r in rules if r.scope == DEVICE}
        self.sensors = {(r.device, r.sensor): r for r in rules if r.scope == SENSOR}

    @classmethod
    def load(cls, conn: Connection, default_min_score: float) -> RuleBook:
        return cls(list_rules(conn), default_min_score)

    def effective(self, device: str, sensor: str) -> EffectiveRule:
        values: dict[str, Any] = {
            "min_score": self.default_min_score,
            "min_duration_minutes": 0.0,
            "quiet_start": None,
            "quiet_end": None,
            "muted_until": None,
        }
        for rule in (self.fleet, self.devices.get(device), self.sensors.get((device, sensor))):
            if rule is None:
                continue
            for name in values:
                value = getattr(rule, name)
                if value is not None:
                    values[name] = value
        return EffectiveRule(**values)


def mute_until(minutes: float | None, until: datetime | None, now: datetime) -> datetime:
    """The end of a mute given as minutes from now or as a time (which must be in the future)."""
    if (minutes is None) == (until is None):
        raise RuleError("give a mute's length (minutes) or its end (until), not both")
    if minutes is not None:
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)):
            raise RuleError("minutes must be a number")
        if not 0 < minutes <= 366 * 24 * 60:
            raise RuleError("minutes must be between 0 and 527040 (a year)")
        return now + timedelta(minutes=float(minutes))
    if until <= now:
        raise RuleError("until must be in the future")
    return until
