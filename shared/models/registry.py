"""The model registry: every version of every sensor's model, and which one is active.

Rows live in SQL (``models``, ``model_sets``, ``active_models``); the models themselves live in
model-set blobs (many models per file, see ``scoring.model_sets``), so a run downloads a few
files for thousands of sensors instead of one blob per sensor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, and_, bindparam, delete, func, insert, select

from shared.clock import utcnow
from shared.db.schema import active_models, models
from shared.features import MAX_LISTED_SENSORS, sensor_range


class RegistryError(ValueError):
    """A registry request that cannot be honoured (unknown version, nothing to roll back to)."""


def unfit_reason(threshold: float | None, calibration: dict | str | None) -> str | None:
    """Why a registered version must not be active, or ``None`` when it is fit to be.

    A cheap sanity check of what training recorded: the threshold and every number in the
    calibration must be finite (a NaN threshold flags nothing, an infinite one everything).
    Used by the retraining gate (``shared.training``) and by :func:`rollback`, which skips
    versions the gate kept inactive.
    """
    if threshold is None or not math.isfinite(float(threshold)):
        return f"threshold is {threshold}"
    if isinstance(calibration, str):
        try:
            calibration = json.loads(calibration)
        except ValueError:
            return "calibration is not valid JSON"
    bad = [name for name, value in _numbers(calibration or {}, "") if not math.isfinite(value)]
    if bad:
        return f"calibration not finite: {', '.join(bad[:5])}"
    return None


def _numbers(value, path: str):
    """(path, number) for every number in a JSON value (bools are not numbers here)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, float(value)


@dataclass(frozen=True)
class ActiveModel:
    device: str
    sensor: str
    version: int
    model_file: str
    format: str


def active_models_for(
    conn: Connection,
    devices: Sequence[str] | None = None,
    sensors: Sequence[tuple[str, str]] | None = None,
) -> dict[tuple[str, str], ActiveModel]:
    """The active model of every sensor (optionally filtered), keyed by (device, sensor).

    With ``sensors``, only those sensors' models are read: SQL seeks the devices they belong to
    (the key leads with device) within the (device, sensor) range they span, and the few rows of
    that range that are not wanted are dropped here. So a caller that looks up one chunk of
    sensors at a time reads about a chunk of rows, never the whole fleet's models.
    """
    query = select(
        active_models.c.device,
        active_models.c.sensor,
        active_models.c.version,
        models.c.blob_path,
        models.c.format,
    ).join(
        models,
        and_(
            models.c.device == active_models.c.device,
            models.c.sensor == active_models.c.sensor,
            models.c.version == active_models.c.version,
        ),
    )
    if devices:
        query = query.where(active_models.c.device.in_(list(devices)))
    if sensors:
        query = query.where(sensor_range(active_models.c.device, active_models.c.sensor, sensors))
        listed = sorted({d for d, _ in sensors})
        if len(listed) <= MAX_LISTED_SENSORS:
            query = query.where(active_models.c.device.in_(listed))
    out: dict[tuple[str, str], ActiveModel] = {}
    wanted = set(map(tuple, sensors)) if sensors else None
    for device, sensor, version, blob_path, fmt in conn.execute(query):
        if wanted is not None and (device, sensor) not in wanted:
            continue
        out[(device, sensor)] = ActiveModel(
            device, sensor, version, blob_path.rsplit("/", 1)[-1], fmt
        )
    return out


def activate(conn: Connection, device: str, sensor: str, version: int) -> None:
    """Make ``version`` the active model of a sensor (replacing any other)."""
    exists = conn.execute(
        select(func.count())
        .select_from(models)
        .where(models.c.device == device, models.c.sensor == sensor, models.c.version == version)
    ).scalar_one()
    if not exists:
        raise RegistryError(f"no model version {version} for {device}/{sensor}")
    conn.execute(
        delete(active_models).where(
            active_models.c.device == device, active_models.c.sensor == sensor
        )
    )
    conn.execute(
        insert(active_models).values(
            device=device, sensor=sensor, version=version, activated_at=utcnow()
        )
    )


def activate_many(conn: Connection, keys: Sequence[tuple[str, str, int]]) -> None:
    """Activate many just-registered versions at once (bulk delete + insert)."""
    if not keys:
        return
    conn.execute(
        delete(active_models).where(
            active_models.c.device == bindparam("d"), active_models.c.sensor == bindparam("s")
        ),
        [{"d": d, "s": s} for d, s, _ in keys],
    )
    now = utcnow()
    conn.execute(
        insert(active_models),
        [{"device": d, "sensor": s, "version": v, "activated_at": now} for d, s, v in keys],
    )


def activate_version(engine: Engine, device: str, sensor: str, version: int) -> None:
    with engine.begin() as conn:
        activate(conn, device, sensor, version)


def rollback(engine: Engine, device: str, sensor: str) -> int:
    """Activate the newest version before the active one that is fit to be active (versions
    the retraining gate kept inactive are skipped, see :func:`unfit_reason`); returns it."""
    with engine.begin() as conn:
        current = conn.execute(
            select(active_models.c.version).where(
                active_models.c.device == device, active_models.c.sensor == sensor
            )
        ).scalar_one_or_none()
        if current is None:
            raise RegistryError(f"{device}/{sensor} has no active model to roll back from")
        earlier = conn.execute(
            select(models.c.version, models.c.threshold, models.c.calibration)
            .where(
                models.c.device == device,
                models.c.sensor == sensor,
                models.c.version < current,
            )
            .order_by(models.c.version.desc())
        ).all()
        previous = next((v for v, th, cal in earlier if unfit_reason(th, cal) is None), None)
        if previous is None:
            raise RegistryError(f"{device}/{sensor} has no fit version before {current}")
        activate(conn, device, sensor, previous)
        return previous


def list_versions(
    engine: Engine, device: str | None = None, sensor: str | None = None, limit: int = 200
) -> list[dict]:
    """Registry rows, newest first, with an ``active`` flag."""
    query = (
        select(models, active_models.c.version.label("active_version"))
        .outerjoin(
            active_models,
            and_(
                active_models.c.device == models.c.device,
                active_models.c.sensor == models.c.sensor,
            ),
        )
        .order_by(models.c.device, models.c.sensor, models.c.version.desc())
        .limit(limit)
    )
    if device:
        query = query.where(models.c.device == device)
    if sensor:
        query = query.where(models.c.sensor == sensor)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    out = []
    for r in rows:
        item = {k: v for k, v in r._mapping.items() if k != "active_version"}
        item["active"] = r.active_version == r.version
        item["calibration"] = json.loads(r.calibration) if r.calibration else None
        out.append(item)
    return out


def next_versions(conn: Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The next free version number of each sensor."""
    highest = {
        (d, s): v
        for d, s, v in conn.execute(
            select(models.c.device, models.c.sensor, func.max(models.c.version)).group_by(
                models.c.device, models.c.sensor
            )
        )
    }
    return {key: highest.get(key, 0) + 1 for key in keys}


def trained_with_key(conn: Connection, training_key: str) -> set[tuple[str, str]]:
    """Sensors that already have a model from this training key (re-training is a no-op)."""
    return {
        (d, s)
        for d, s in conn.execute(
            select(models.c.device, models.c.sensor).where(models.c.training_key == training_key)
        )
    }


def window_label(start: datetime, end: datetime) -> str:
    return f"{start.isoformat()}/{end.isoformat()}"
