"""A small simulated fleet, ingested and trained, shared by the run tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.context import AppContext
from shared.evaluation import simulated_fleet
from shared.runs.windows import Window
from shared.simulate import Fleet, labelled_buckets

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
    fleet, window = simulated_fleet(
        ctx, devices, sensors, hours, end, seed, anomaly_share, workers=1
    )
    return Scenario(fleet, window)
