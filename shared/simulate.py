"""A fleet simulator shaped like the reference data, with injected, labelled anomalies.

The reference generated, for 3 devices x 5 sensors, a reading every 5 seconds, each sensor's
value uniform in its own range (sensor 1: 10-15, 2: 30-40, 3: 60-65, 4: 80-85, 5: 100-110).
Here any number of devices and sensors per device is possible (sensor ``j`` takes reference range
``j % 5`` shifted up by 200 per cycle of five), generation is vectorised, and anomalies of three
kinds are injected after ``anomalies_from`` (by default in the last hour only, so the training
hours are clean):

* ``spike``: one reading far outside the range (3 range-widths above or below);
* ``level_shift``: 3-10 minutes with every reading moved up by 2 range-widths;
* ``stuck``: 5-10 minutes with every reading frozen at one value inside the range.

Every injected anomaly is written to the labels (device, sensor, kind, start, end exclusive), so
quality can be measured against them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

REFERENCE_RANGES = ((10.0, 15.0), (30.0, 40.0), (60.0, 65.0), (80.0, 85.0), (100.0, 110.0))
KINDS = ("spike", "level_shift", "stuck")


@dataclass(frozen=True)
class Anomaly:
    device: str
    sensor: str
    kind: str
    start: datetime
    end: datetime  # exclusive

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "sensor": self.sensor,
            "kind": self.kind,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
        }


@dataclass
class FleetSpec:
    """What to simulate. Times are naive UTC; ``end`` is exclusive."""

    start: datetime
    end: datetime
    devices: int = 3
    sensors_per_device: int = 5
    interval_seconds: int = 5
    seed: int = 7
    anomaly_share: float = 0.3  # share of sensors that get one anomaly
    anomalies_from: datetime | None = None  # default: the last hour of [start, end)

    @property
    def n_steps(self) -> int:
        return int((self.end - self.start).total_seconds() // self.interval_seconds)

    @property
    def n_sensors(self) -> int:
        return self.devices * self.sensors_per_device


@dataclass
class Fleet:
    """A generated fleet: ids, ranges, injected anomalies; values are produced in time slices."""

    spec: FleetSpec
    devices: np.ndarray
    sensors: np.ndarray
    low: np.ndarray
    high: np.ndarray
    anomalies: list[Anomaly] = field(default_factory=list)
    # (sensor index, (first step, end step), kind, level) for each injected anomaly.
    _injections: list = field(default_factory=list)

    def sensor_ids(self) -> list[tuple[str, str]]:
        return list(zip(self.devices.tolist(), self.sensors.tolist(), strict=True))

    def values(self, step_start: int, step_end: int) -> np.ndarray:
        """Values for steps ``[step_start, step_end)``: shape (steps, sensors)."""
        spec = self.spec
        # One generator per slice, seeded by position: the same slice always gives the same data.
        rng = np.random.default_rng([spec.seed, step_start])
        steps = step_end - step_start
        values = rng.uniform(self.low, self.high, size=(steps, spec.n_sensors))
        for index, anomaly_steps, kind, level in self._injections:
            lo, hi = anomaly_steps
            a, b = max(lo, step_start), min(hi, step_end)
            if a >= b:
                continue
            rows = slice(a - step_start, b - step_start)
            width = self.high[index] - self.low[index]
            if kind == "spike":
                values[rows, index] = level
            elif kind == "level_shift":
                values[rows, index] += 2.0 * width
            else:
                values[rows, index] = level
        return values

    def timestamps(self, step_start: int, step_end: int) -> list[datetime]:
        step = timedelta(seconds=self.spec.interval_seconds)
        return [self.spec.start + i * step for i in range(step_start, step_end)]


def make_fleet(spec: FleetSpec) -> Fleet:
    """Ids, ranges and the anomalies to inject, decided up front from ``spec.seed``."""
    rng = np.random.default_rng(spec.seed)
    n = spec.n_sensors
    device_idx = np.repeat(np.arange(spec.devices), spec.sensors_per_device)
    sensor_idx = np.tile(np.arange(spec.sensors_per_device), spec.devices)
    devices = np.array([f"device-{d + 1:03d}" for d in device_idx])
    sensors = np.array([f"sensor-{s + 1:02d}" for s in sensor_idx])
    base = np.array(REFERENCE_RANGES)[sensor_idx % 5]
    shift = 200.0 * (sensor_idx // 5)
    low, high = base[:, 0] + shift, base[:, 1] + shift
    fleet = Fleet(spec, devices, sensors, low, high)

    step_seconds = spec.interval_seconds
    anomalies_from = spec.anomalies_from or max(spec.start, spec.end - timedelta(hours=1))
    first = int((anomalies_from - spec.start).total_seconds() // step_seconds)
    last = spec.n_steps
    chosen = np.flatnonzero(rng.random(n) < spec.anomaly_share) if last > first else []
    for index in chosen:
        kind = KINDS[rng.integers(len(KINDS))]
        width = high[index] - low[index]
        if kind == "spike":
            length = 1
            sign = 1.0 if rng.random() < 0.5 else -1.0
            level = (high[index] + 3 * width) if sign > 0 else (low[index] - 3 * width)
        elif kind == "level_shift":
            length = int(rng.integers(3, 11)) * 60 // step_seconds
            level = 0.0
        else:
            length = int(rng.integers(5, 11)) * 60 // step_seconds
            level = float(rng.uniform(low[index], high[index]))
        if last - first <= length:
            continue
        begin = int(rng.integers(first, last - length))
        fleet._injections.append((int(index), (begin, begin + length), kind, float(level)))
        start = spec.start + timedelta(seconds=begin * step_seconds)
        fleet.anomalies.append(
            Anomaly(
                str(devices[index]),
                str(sensors[index]),
                kind,
                start,
                start + timedelta(seconds=length * step_seconds),
            )
        )
    return fleet


def iter_event_bodies(
    fleet: Fleet, readings_per_event: int = 100, steps_per_slice: int = 120
) -> Iterator[bytes]:
    """JSON event bodies (lists of readings), in time order across the fleet, as sensors send."""
    spec = fleet.spec
    ids = fleet.sensor_ids()
    buffer: list[str] = []
    for step_start in range(0, spec.n_steps, steps_per_slice):
        step_end = min(step_start + steps_per_slice, spec.n_steps)
        values = fleet.values(step_start, step_end)
        for row, ts in enumerate(fleet.timestamps(step_start, step_end)):
            stamp = ts.isoformat() + "Z"
            for (device, sensor), value in zip(ids, values[row].tolist(), strict=True):
                # Ids are generated from a safe alphabet, so no JSON escaping is needed.
                buffer.append(
                    f'{{"device":"{device}","sensor":"{sensor}","ts":"{stamp}","value":{value!r}}}'
                )
                if len(buffer) == readings_per_event:
                    yield ("[" + ",".join(buffer) + "]").encode()
                    buffer = []
    if buffer:
        yield ("[" + ",".join(buffer) + "]").encode()


def write_csv(fleet: Fleet, path: Path, steps_per_slice: int = 720) -> int:
    """The fleet's readings in the reference layout ``TS,Device,Sensor,Value``; returns rows."""
    spec = fleet.spec
    ids = fleet.sensor_ids()
    rows = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["TS", "Device", "Sensor", "Value"])
        for step_start in range(0, spec.n_steps, steps_per_slice):
            step_end = min(step_start + steps_per_slice, spec.n_steps)
            values = fleet.values(step_start, step_end)
            for row, ts in enumerate(fleet.timestamps(step_start, step_end)):
                stamp = ts.isoformat(sep=" ")
                for (device, sensor), value in zip(ids, values[row].tolist(), strict=True):
                    writer.writerow([stamp, device, sensor, repr(value)])
                    rows += 1
    return rows


def write_labels(fleet: Fleet, path: Path) -> None:
    """The injected anomalies as JSON (a list of {device, sensor, kind, start, end})."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([a.as_dict() for a in fleet.anomalies], indent=1))


def labelled_buckets(
    anomalies: list[Anomaly], bucket_seconds: int, min_overlap: float = 0.5
) -> set[tuple[str, str, datetime]]:
    """(device, sensor, bucket_start) of the buckets an injected anomaly makes anomalous.

    A spike's bucket always counts (one reading far out of range shows in its max or min). A
    level shift or stuck stretch counts in the buckets it covers for at least ``min_overlap``
    of their length: a bucket holding one shifted reading among twelve is, by its aggregates,
    barely different from a normal one, and no bucket-level detector should be scored on it.
    ``min_overlap=0`` gives every bucket an anomaly touches: evaluations leave the touched but
    unlabelled ones out of both precision and recall ("don't care").
    """
    out: set[tuple[str, str, datetime]] = set()
    epoch = datetime(1970, 1, 1)
    width = timedelta(seconds=bucket_seconds)
    for a in anomalies:
        first = int((a.start - epoch).total_seconds()) // bucket_seconds
        last = (int((a.end - epoch).total_seconds()) - 1) // bucket_seconds
        for b in range(first, last + 1):
            start = epoch + timedelta(seconds=b * bucket_seconds)
            overlap = min(a.end, start + width) - max(a.start, start)
            if a.kind == "spike" or overlap >= width * min_overlap or min_overlap == 0:
                out.add((a.device, a.sensor, start))
    return out


def send_to_event_hub(
    fleet: Fleet,
    connection_string: str | None,
    namespace: str | None,
    eventhub_name: str,
    readings_per_event: int = 100,
) -> int:
    """Send the fleet to a real Event Hub in ``EventDataBatch``-sized sends; returns events sent.

    Authenticates with the connection string when given, else with DefaultAzureCredential
    against ``namespace`` (``<name>.servicebus.windows.net``).
    """
    from azure.eventhub import EventHubProducerClient

    if connection_string:
        producer = EventHubProducerClient.from_connection_string(
            connection_string, eventhub_name=eventhub_name
        )
    elif namespace:
        from azure.identity import DefaultAzureCredential

        producer = EventHubProducerClient(
            fully_qualified_namespace=namespace,
            eventhub_name=eventhub_name,
            credential=DefaultAzureCredential(),
        )
    else:
        raise ValueError(
            "set EventHubConnection (connection string) or "
            "EventHubConnection__fullyQualifiedNamespace to send to Event Hubs"
        )
    sent = 0
    with producer:
        for batch in pack_event_batches(
            iter_event_bodies(fleet, readings_per_event), producer.create_batch
        ):
            producer.send_batch(batch)
            sent += len(batch)
    return sent


def pack_event_batches(bodies, new_batch) -> Iterator:
    """Fill ``EventDataBatch`` objects from ``new_batch()`` with bodies until each is full."""
    from azure.eventhub import EventData

    batch = new_batch()
    for body in bodies:
        try:
            batch.add(EventData(body))
        except ValueError:  # the batch is at its size limit: hand it over, start the next
            if len(batch) == 0:
                raise
            yield batch
            batch = new_batch()
            batch.add(EventData(body))
    if len(batch):
        yield batch
