"""Measuring detection quality against labels: simulated anomalies and the NAB benchmark.

Both go through the product's own paths (ingestion or CSV import, the training service, runs
with the local executor, recording through the blob trigger), so the figures describe what the
product does, not a side experiment. Used by the quality tests and ``bench/bench_quality.py``.

NAB protocol (``../shared/data/nab``, realAWSCloudwatch): each file is one sensor; it is trained
on its first 30% (NAB's probationary period) and the rest is scored in one run. Reported per
file and overall: *window recall*, the share of labelled anomaly windows in the scored part with
at least one flagged bucket, and *false alarm share*, the share of flagged buckets outside every
labelled window; plus the share of buckets flagged (the reference's defaults flagged 100% of
some series).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from shared.context import AppContext
from shared.db.schema import predictions
from shared.ingestion.csv_import import import_csv
from shared.local.host import deliver_predictions
from shared.models.training import train_models
from shared.runs import records
from shared.runs.records import RunFilters
from shared.runs.service import start_run
from shared.runs.windows import Window

PROBATION = 0.3


@dataclass
class SeriesResult:
    name: str
    buckets: int
    flagged: int
    windows: int
    windows_found: int
    false_alarms: int
    run_status: str

    @property
    def flag_share(self) -> float:
        return self.flagged / self.buckets if self.buckets else 0.0


@dataclass
class NabReport:
    series: list[SeriesResult] = field(default_factory=list)

    @property
    def window_recall(self) -> float:
        windows = sum(s.windows for s in self.series)
        return sum(s.windows_found for s in self.series) / windows if windows else 0.0

    @property
    def false_alarm_share(self) -> float:
        flagged = sum(s.flagged for s in self.series)
        return sum(s.false_alarms for s in self.series) / flagged if flagged else 0.0

    def table(self) -> str:
        lines = [
            f"{'series':<42}{'buckets':>8}{'flagged':>8}{'share':>7}{'windows':>9}"
            f"{'found':>6}{'false':>6}"
        ]
        for s in self.series:
            lines.append(
                f"{s.name:<42}{s.buckets:>8}{s.flagged:>8}{s.flag_share:>7.1%}"
                f"{s.windows:>9}{s.windows_found:>6}{s.false_alarms:>6}"
            )
        lines.append(
            f"overall: window recall {self.window_recall:.2f}, false alarm share "
            f"{self.false_alarm_share:.2f}"
        )
        return "\n".join(lines)


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def evaluate_nab(ctx: AppContext, nab_dir: Path, group: str = "realAWSCloudwatch") -> NabReport:
    """Import, train, score and evaluate every file of a NAB group; see the module docstring."""
    labels = json.loads((nab_dir / "labels.json").read_text())
    report = NabReport()
    bucket = timedelta(seconds=ctx.settings.bucket_seconds)
    for path in sorted((nab_dir / group).glob("*.csv")):
        device, sensor = "nab", path.stem.replace("_", "-")[:64]
        import_csv(path, ctx.engine, ctx.store, ctx.settings.deadletter_container, device, sensor)
        stamps = [line.split(",", 1)[0] for line in path.read_text().splitlines()[1:] if line]
        first, last = _parse(stamps[0]), _parse(stamps[-1])
        split = first + (last - first) * PROBATION
        end = last + bucket
        train_models(ctx, first, split, sensors=[(device, sensor)], workers=1)
        run, _ = start_run(ctx, Window(split, end), "cli", RunFilters(sensors=((device, sensor),)))
        deliver_predictions(ctx, run.run_id)
        run = records.get_run(ctx.engine, run.run_id)
        with ctx.engine.connect() as conn:
            rows = conn.execute(
                select(predictions.c.bucket_start, predictions.c.is_anomaly).where(
                    predictions.c.run_id == run.run_id
                )
            ).all()
        windows = [(_parse(a), _parse(b)) for a, b in labels.get(f"{group}/{path.name}", [])]
        windows = [(a, b) for a, b in windows if b >= split]

        def inside(b: datetime, windows=windows) -> bool:
            return any(a - bucket < b <= w_end for a, w_end in windows)

        flagged = [b for b, anomalous in rows if anomalous]
        found = sum(1 for a, w_end in windows if any(a - bucket < b <= w_end for b in flagged))
        report.series.append(
            SeriesResult(
                name=path.stem,
                buckets=len(rows),
                flagged=len(flagged),
                windows=len(windows),
                windows_found=found,
                false_alarms=sum(1 for b in flagged if not inside(b)),
                run_status=run.status,
            )
        )
    return report


@dataclass
class SimulatedReport:
    labelled_buckets: int
    flagged: int
    hits: int
    anomalies: int
    anomalies_found: int

    @property
    def precision(self) -> float:
        return self.hits / self.flagged if self.flagged else 1.0

    @property
    def recall(self) -> float:
        return self.hits / self.labelled_buckets if self.labelled_buckets else 1.0

    def summary(self) -> str:
        return (
            f"bucket precision {self.precision:.3f}, recall {self.recall:.3f} "
            f"({self.hits} of {self.labelled_buckets} labelled buckets flagged, "
            f"{self.flagged} flagged); {self.anomalies_found} of {self.anomalies} injected "
            f"anomalies found"
        )


def simulated_fleet(
    ctx: AppContext,
    devices: int,
    sensors: int,
    hours: float,
    end: datetime,
    seed: int,
    anomaly_share: float = 0.5,
    workers: int | None = None,
):
    """A fleet with anomalies in its last hour, ingested through the Event Hubs function and
    trained on the hours before it; returns (fleet, the last hour's window)."""
    from shared.local.host import deliver_events
    from shared.simulate import FleetSpec, iter_event_bodies, make_fleet

    window = Window(end - timedelta(hours=1), end)
    fleet = make_fleet(
        FleetSpec(
            start=end - timedelta(hours=hours),
            end=end,
            devices=devices,
            sensors_per_device=sensors,
            seed=seed,
            anomaly_share=anomaly_share,
            anomalies_from=window.start,
        )
    )
    for _ in deliver_events(iter_event_bodies(fleet)):
        pass
    train_models(ctx, fleet.spec.start, window.start, workers=workers)
    return fleet, window


def evaluate_simulated(
    ctx: AppContext,
    devices: int = 10,
    sensors: int = 5,
    hours: float = 5,
    seed: int = 3,
    end: datetime = datetime(2026, 2, 1, 12),
) -> SimulatedReport:
    """Simulate a fleet (:func:`simulated_fleet`), run its last hour, compare with the labels."""
    from shared.simulate import labelled_buckets

    fleet, window = simulated_fleet(ctx, devices, sensors, hours, end, seed)
    run, _ = start_run(ctx, window, "cli")
    deliver_predictions(ctx, run.run_id)
    with ctx.engine.connect() as conn:
        flagged = set(
            conn.execute(
                select(
                    predictions.c.device, predictions.c.sensor, predictions.c.bucket_start
                ).where(predictions.c.run_id == run.run_id, predictions.c.is_anomaly.is_(True))
            ).all()
        )
    truth = {
        k
        for k in labelled_buckets(fleet.anomalies, ctx.settings.bucket_seconds)
        if window.start <= k[2] < window.end
    }
    # Buckets an anomaly only grazes count neither way (see simulate.labelled_buckets).
    flagged -= labelled_buckets(fleet.anomalies, ctx.settings.bucket_seconds, 0) - truth
    hits = flagged & truth
    found = {(d, s) for d, s, _ in hits}
    return SimulatedReport(
        labelled_buckets=len(truth),
        flagged=len(flagged),
        hits=len(hits),
        anomalies=len(fleet.anomalies),
        anomalies_found=sum(1 for a in fleet.anomalies if (a.device, a.sensor) in found),
    )
