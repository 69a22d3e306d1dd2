"""Retraining on a schedule: :func:`retrain_due` trains a new model version for every sensor
that needs one and activates it only when it is fit to.

Window
    The trailing window ``[end - TRAIN_WINDOW_HOURS, end)`` with ``end`` = ``now`` floored to a
    bucket (and the start floored too), so training sees whole buckets, as scoring does.

Which sensors (the *due* rule)
    Every sensor with readings in the window that either has no active model (first training
    is automatic) or whose active model's training window ended before the latest occurrence
    of ``TRAINING_SCHEDULE`` (floored to a bucket). On time, that is "ended at least one
    schedule interval ago"; and whatever the timer's delay (a late catch-up yesterday, an
    on-time fire today), a sensor is trained at most once per occurrence and never skipped.
    A second call at the same ``now`` finds nothing due; a sensor trained by hand since the
    latest occurrence waits for the next one.

Fitness gate
    :func:`train_models` registers new versions without activating them; a version then
    becomes active only when it had enough buckets (``MIN_TRAINING_BUCKETS``; fewer are not
    fitted at all), its fit did not fail, and its threshold and calibration are finite
    (:func:`shared.models.registry.unfit_reason`). Otherwise the old version stays active and
    the sensor is reported with the reason. A version is also left alone when an operator
    activated or rolled back a version after it was trained (the operator's choice stands
    until the next training). The registry keeps every version: ``models rollback`` returns
    to the newest earlier fit version.

Bounded work
    Sensors are taken in batches of consecutive (device, sensor) ids, sized so that a batch's
    buckets (sensors x buckets per sensor in the window) stay under ``BATCH_BUCKETS``; each
    batch is one :func:`train_models` call (its SQL reads the batch's id range, see
    :func:`shared.features.sensor_range`). Batches holding the stalest sensors (no model, then
    the oldest training window) go first, and with ``budget_seconds`` no batch but the first
    starts after the budget is spent: the rest stay due and come first at the next call. Each
    call writes its report to ``reports/training/<window end>.json`` (a re-run overwrites it).

Idempotence
    Training is idempotent per training key (window and spec, see ``train_models``); the gate
    re-examines versions of this key that were registered but never activated (a call that
    died between registering and activating), so a retry completes the work.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, select

from shared.blobs import training_report_blob
from shared.clock import utcnow
from shared.context import AppContext
from shared.db.schema import active_models, models, readings
from shared.features import bucket_floor, sensor_range
from shared.models.registry import activate_many, unfit_reason
from shared.models.training import train_models
from shared.runs.windows import Window, last_occurrence

log = logging.getLogger(__name__)

# Aggregated buckets held in memory by one batch (rows of the features table; a few hundred
# bytes each while fetched). 14 days of 60 s buckets is 20,160 per sensor: ~100 sensors a batch.
BATCH_BUCKETS = 2_000_000
# And never more sensors than this in one batch (long windows of coarse buckets).
MAX_BATCH_SENSORS = 10_000
# The timer's budget: host.json's functionTimeout is 30 minutes; stop starting batches well
# before it, the rest stay due for the next occurrence.
TIMER_BUDGET_SECONDS = 20 * 60

KEPT_TOO_FEW_BUCKETS = "too_few_buckets"
KEPT_FAILED = "failed"
KEPT_UNFIT = "unfit"
KEPT_OPERATOR = "operator_choice"


@dataclass(frozen=True)
class Kept:
    """A due sensor whose new version did not become active (its old one, if any, stays)."""

    device: str
    sensor: str
    kind: str
    reason: str
    active_version: int | None
    new_version: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RetrainingReport:
    """What one :func:`retrain_due` call did."""

    window: Window
    due_before: datetime
    sensors_with_data: int = 0
    due_first: int = 0
    due_stale: int = 0
    batches: int = 0
    batches_done: int = 0
    activated: list[tuple[str, str, int]] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    not_reached: int = 0
    training_keys: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def due(self) -> int:
        return self.due_first + self.due_stale

    def as_dict(self, limit: int | None = None) -> dict[str, Any]:
        return {
            "window": [self.window.start.isoformat(), self.window.end.isoformat()],
            "due_before": self.due_before.isoformat(),
            "sensors_with_data": self.sensors_with_data,
            "due": {"first_training": self.due_first, "retraining": self.due_stale},
            "batches": {"planned": self.batches, "done": self.batches_done},
            "activated": len(self.activated),
            "kept": len(self.kept),
            "kept_sensors": [k.as_dict() for k in self.kept[:limit]],
            "not_reached": self.not_reached,
            "training_keys": self.training_keys,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class _Active:
    version: int
    train_end: datetime
    activated_at: datetime


def training_window(ctx: AppContext, now: datetime) -> Window:
    """The trailing window a retraining at ``now`` uses, aligned to buckets."""
    bucket = ctx.settings.bucket_seconds
    end = bucket_floor(now, bucket)
    return Window(bucket_floor(end - timedelta(hours=ctx.settings.train_window_hours), bucket), end)


def _sensors_with_data(ctx: AppContext, window: Window) -> list[tuple[str, str]]:
    query = (
        select(readings.c.device, readings.c.sensor)
        .where(readings.c.ts >= window.start, readings.c.ts < window.end)
        .distinct()
    )
    with ctx.engine.connect() as conn:
        return sorted((d, s) for d, s in conn.execute(query))


def _active(conn, sensors: Sequence[tuple[str, str]] | None = None) -> dict:
    """The active version of every sensor (or of ``sensors``), with its training window end."""
    query = select(
        active_models.c.device,
        active_models.c.sensor,
        active_models.c.version,
        models.c.train_end,
        active_models.c.activated_at,
    ).join(
        models,
        and_(
            models.c.device == active_models.c.device,
            models.c.sensor == active_models.c.sensor,
            models.c.version == active_models.c.version,
        ),
    )
    if sensors:
        query = query.where(sensor_range(active_models.c.device, active_models.c.sensor, sensors))
    wanted = set(sensors) if sensors else None
    return {
        (d, s): _Active(v, end, at)
        for d, s, v, end, at in conn.execute(query)
        if wanted is None or (d, s) in wanted
    }


def _batches(
    ctx: AppContext, window: Window, sensors: list[tuple[str, str]]
) -> list[list[tuple[str, str]]]:
    """Consecutive ids (sorted), each batch's buckets under BATCH_BUCKETS."""
    buckets_per_sensor = max(1, int(window.length.total_seconds()) // ctx.settings.bucket_seconds)
    size = max(1, min(MAX_BATCH_SENSORS, BATCH_BUCKETS // buckets_per_sensor))
    return [sensors[i : i + size] for i in range(0, len(sensors), size)]


def retrain_due(
    ctx: AppContext,
    now: datetime | None = None,
    *,
    estimator: str | None = None,
    budget_seconds: float | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RetrainingReport:
    """Train and (when fit) activate a new version for every due sensor; see the module doc.

    Parameters
    ----------
    now : datetime, optional
        Naive UTC; default the current time.
    estimator : str, optional
        A name from ``estimator_templates()``; default ``train_models``' default.
    budget_seconds : float, optional
        Start no batch after this many seconds (the rest stay due; ``not_reached`` counts them).
    progress : callable, optional
        Called with (sensors done, sensors due) after each batch.
    """
    started = time.perf_counter()
    now = now or utcnow()
    settings = ctx.settings
    window = training_window(ctx, now)
    due_before = bucket_floor(
        last_occurrence(settings.training_schedule, now), settings.bucket_seconds
    )
    report = RetrainingReport(window, due_before)

    with_data = _sensors_with_data(ctx, window)
    report.sensors_with_data = len(with_data)
    with ctx.engine.connect() as conn:
        active = _active(conn)
    # Staleness of a due sensor: no model first, then the oldest training window.
    staleness: dict[tuple[str, str], datetime] = {}
    for key in with_data:
        current = active.get(key)
        if current is None:
            staleness[key] = datetime.min
            report.due_first += 1
        elif current.train_end < due_before:
            staleness[key] = current.train_end
            report.due_stale += 1
    del active

    batches = [
        due
        for batch in _batches(ctx, window, with_data)
        if (due := [key for key in batch if key in staleness])
    ]
    batches.sort(key=lambda due: min(staleness[key] for key in due))
    report.batches = len(batches)
    options: dict[str, Any] = {"activate_new": False, "workers": workers}
    if estimator:
        options["estimator"] = estimator
    done = 0
    for batch in batches:
        # The first batch always runs, so even a spent budget makes progress.
        spent = time.perf_counter() - started
        if report.batches_done and budget_seconds is not None and spent > budget_seconds:
            report.not_reached += len(batch)
            continue
        trained = train_models(ctx, window.start, window.end, sensors=batch, **options)
        if trained.training_key not in report.training_keys:
            report.training_keys.append(trained.training_key)
        _gate(ctx, batch, trained, report)
        report.batches_done += 1
        done += len(batch)
        if progress:
            progress(done, report.due)

    report.seconds = time.perf_counter() - started
    if report.due:
        ctx.store.upload(
            settings.reports_container,
            training_report_blob(window.end),
            json.dumps(report.as_dict(), indent=1).encode(),
            content_type="application/json",
        )
    log.info("retraining done", extra={"retraining": report.as_dict(limit=20)})
    return report


def _gate(ctx: AppContext, batch: list[tuple[str, str]], trained, report: RetrainingReport) -> None:
    """Activate the fit versions of this training key among ``batch``; report the rest."""
    min_buckets = ctx.settings.min_training_buckets
    wanted = set(batch)
    candidates = select(
        models.c.device,
        models.c.sensor,
        models.c.version,
        models.c.threshold,
        models.c.calibration,
        models.c.created_at,
    ).where(
        models.c.training_key == trained.training_key,
        sensor_range(models.c.device, models.c.sensor, batch),
    )
    with ctx.engine.begin() as conn:
        active = _active(conn, batch)

        def kept(device, sensor, kind, reason, new_version=None):
            current = active.get((device, sensor))
            version = None if current is None else current.version
            report.kept.append(Kept(device, sensor, kind, reason, version, new_version))

        for device, sensor, buckets in trained.too_few_buckets:
            reason = f"{buckets} buckets in the window; MIN_TRAINING_BUCKETS is {min_buckets}"
            kept(device, sensor, KEPT_TOO_FEW_BUCKETS, reason)
        for device, sensor, reason in trained.failed:
            kept(device, sensor, KEPT_FAILED, reason)

        to_activate = []
        for r in conn.execute(candidates):
            if (r.device, r.sensor) not in wanted:
                continue
            current = active.get((r.device, r.sensor))
            if current is not None and current.version == r.version:
                continue  # activated by an earlier call for this window
            reason = unfit_reason(r.threshold, r.calibration)
            if reason is not None:
                kept(r.device, r.sensor, KEPT_UNFIT, reason, r.version)
            elif current is not None and (
                current.version > r.version or current.activated_at > r.created_at
            ):
                reason = (
                    f"version {current.version} was activated at "
                    f"{current.activated_at.isoformat()}, after version {r.version} was trained"
                )
                kept(r.device, r.sensor, KEPT_OPERATOR, reason, r.version)
            else:
                to_activate.append((r.device, r.sensor, r.version))
        activate_many(conn, to_activate)
    report.activated += to_activate
