"""Detection quality on simulated fleets: injected anomalies against what the product flags.

The fleet goes through the product's own paths (the Event Hubs function, the training service,
runs with the local executor, recording through the blob trigger), so the figures describe what
the product does, not a side experiment.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, true

from shared.context import AppContext
from shared.db.schema import predictions
from shared.local.host import deliver_predictions
from shared.models.training import train_models
from shared.runs.service import start_run
from shared.runs.windows import Window


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
                ).where(predictions.c.run_id == run.run_id, predictions.c.is_anomaly == true())
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
