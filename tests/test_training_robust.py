"""Training with ``exclude_flagged``: buckets that earlier runs flagged stay out of the range the
next model calls normal, so an anomaly inside the training span does not widen it. (Off by
default: measured on NAB it feeds on itself; see ``train_models``.)"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from shared.db.schema import models as models_table
from shared.local.host import deliver_predictions
from shared.models.training import train_models
from shared.runs import records
from shared.runs.service import start_run
from tests import scenario


@pytest.mark.parametrize("sql_url", ["sqlite", "postgresql"], indirect=True)
def test_flagged_buckets_stay_out_of_the_next_training(ctx):
    sc = scenario.build(ctx, devices=2, sensors=4, seed=5, anomaly_share=1.0)
    run, _ = start_run(ctx, sc.window, "cli")
    deliver_predictions(ctx, run.run_id)
    run = records.get_run(ctx.engine, run.run_id)
    assert run.status == records.COMPLETED and run.n_anomalies > 0
    spikes = [a for a in sc.fleet.anomalies if a.kind == "spike"]
    assert spikes, "the scenario injects a spike"

    start = sc.fleet.spec.start
    robust = train_models(
        ctx, start, sc.window.end, activate_new=False, exclude_flagged=True, workers=1
    )
    naive = train_models(ctx, start, sc.window.end, activate_new=False, workers=1)
    assert robust.excluded_flagged == run.n_anomalies
    assert naive.excluded_flagged == 0

    def calibration(version_of_report, device, sensor):
        version = next(v for d, s, v in version_of_report.trained if (d, s) == (device, sensor))
        with ctx.engine.connect() as conn:
            text = conn.execute(
                sa.select(models_table.c.calibration).where(
                    models_table.c.device == device,
                    models_table.c.sensor == sensor,
                    models_table.c.version == version,
                )
            ).scalar_one()
        return json.loads(text)

    for spike in spikes:
        kept = calibration(robust, spike.device, spike.sensor)
        learnt = calibration(naive, spike.device, spike.sensor)
        # The spike widened the range the naive model calls normal; the robust one kept it out.
        assert kept["high"] - kept["low"] < 0.5 * (learnt["high"] - learnt["low"]), (kept, learnt)
