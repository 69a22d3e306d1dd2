"""A small simulated fleet, ingested and trained, shared by the run tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.context import AppContext
from shared.local.host import deliver_events
from shared.models.training import train_models
from shared.runs.windows import Window
from shared.simulate import Fleet, FleetSpec, iter_event_bodies, labelled_buckets, make_fleet

END = datetime(2026, 3, 2, 12, 0, 0)


@dataclass
class Scenario:
    fleet: Fleet
    window: Window  # the scored window (anomalies are injected here)

    def truth(self, bucket_seconds: int = 60) -> set[tuple[str, str, datetime]]:
        return {
            k
            for k in labelled_buckets(self.fleet.anomalies, bucket_seconds)
            if self.window.start <= k[2] < self.window.end
        }


def build(
    ctx: AppContext,
    devices: int = 3,
    sensors: int = 4,
    hours: float = 3,
    end: datetime = END,
    seed: int = 11,
    anomaly_share: float = 0.5,
) -> Scenario:
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
    for _ in deliver_events(iter_event_bodies(fleet), events_per_batch=100):
        pass
    report = train_models(ctx, fleet.spec.start, window.start, workers=1)
    assert len(report.trained) == devices * sensors, report.as_dict()
    return Scenario(fleet, window)
