"""The simulator: reference-shaped values, labelled anomalies, Event Hubs-sized batches.

Event Hubs' endpoint cannot be reached here: batches are built with the real
``azure.eventhub.EventDataBatch`` (which enforces the size limit) and not sent.
"""

import json
from datetime import datetime, timedelta

import numpy as np
from azure.eventhub import EventDataBatch

from shared.simulate import (
    FleetSpec,
    iter_event_bodies,
    labelled_buckets,
    make_fleet,
    pack_event_batches,
    write_labels,
)

END = datetime(2026, 1, 1, 6)


def fleet(**kw):
    spec = dict(
        start=END - timedelta(hours=2),
        end=END,
        devices=4,
        sensors_per_device=7,
        seed=5,
        anomaly_share=1.0,
    )
    return make_fleet(FleetSpec(**{**spec, **kw}))


def test_values_stay_in_each_sensors_range_outside_anomalies():
    f = fleet(anomaly_share=0.0)
    values = f.values(0, f.spec.n_steps)
    assert values.shape == (1440, 28)
    assert (values >= f.low).all() and (values <= f.high).all()
    # sensor-01 is the reference's 10-15 range, sensor-06 the same range shifted by 200
    assert (f.low[0], f.high[0]) == (10.0, 15.0) and (f.low[5], f.high[5]) == (210.0, 215.0)
    # The same slice always gives the same data (batches can be regenerated for redelivery).
    np.testing.assert_array_equal(f.values(100, 200), f.values(100, 200))


def test_anomalies_are_injected_where_labelled(tmp_path):
    f = fleet()
    assert {a.kind for a in f.anomalies} == {"spike", "level_shift", "stuck"}
    values = f.values(0, f.spec.n_steps)
    for a in f.anomalies:
        j = next(i for i, ids in enumerate(f.sensor_ids()) if ids == (a.device, a.sensor))
        first = int((a.start - f.spec.start).total_seconds()) // 5
        last = int((a.end - f.spec.start).total_seconds()) // 5
        stretch = values[first:last, j]
        assert a.start >= END - timedelta(hours=1)  # only in the last hour by default
        if a.kind == "spike":
            assert len(stretch) == 1 and not f.low[j] <= stretch[0] <= f.high[j]
        elif a.kind == "stuck":
            assert len(set(stretch.tolist())) == 1
        else:
            assert (stretch > f.high[j]).all()
    write_labels(f, tmp_path / "labels.json")
    assert len(json.loads((tmp_path / "labels.json").read_text())) == len(f.anomalies)
    assert labelled_buckets(f.anomalies, 60) <= labelled_buckets(f.anomalies, 60, 0)


def test_event_bodies_fill_eventdatabatches_within_their_size_limit():
    f = fleet(anomaly_share=0.0, devices=2)
    bodies = list(iter_event_bodies(f, readings_per_event=100))
    readings = [r for b in bodies for r in json.loads(b)]
    assert len(readings) == f.spec.n_steps * f.spec.n_sensors
    assert readings[0] == {
        "device": "device-001",
        "sensor": "sensor-01",
        "ts": "2026-01-01T04:00:00Z",
        "value": readings[0]["value"],
    }
    batches = list(pack_event_batches(bodies, lambda: EventDataBatch(max_size_in_bytes=64_000)))
    assert len(batches) > 1
    assert sum(len(b) for b in batches) == len(bodies)
    assert all(b.size_in_bytes <= 64_000 for b in batches)
