"""Alerts benchmark: what the outbox adds to recording a chunk, and how fast it is sent.

The chunk of ``bench_events.py`` (1,000 sensors x 60 one-minute buckets, ``--flagged`` of the
buckets flagged in bursts, after ``--history`` hourly windows) is recorded as recording does it:
predictions written, events step, then the outbox step (``enqueue_for_chunk``) with one webhook
receiver configured, all in one transaction; timed per window (median of the last five), and
again on a redelivery (nothing to add). Then the queued notifications are sent to a real HTTPS
receiver on loopback (``tests/receivers.py``, self-signed TLS), timed: notifications per second
of ``deliver_pending`` (claim, sign, POST, mark sent). SQLite.

    .venv/bin/python bench/bench_alerts.py [--sensors 1000 --history 6 --flagged 0.02]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, insert, select  # noqa: E402

from bench.bench_events import START, flags_for, record_chunk, rows_for  # noqa: E402
from shared.alerts.delivery import deliver_pending  # noqa: E402
from shared.alerts.outbox import enqueue_for_chunk  # noqa: E402
from shared.clock import utcnow  # noqa: E402
from shared.db import migrate  # noqa: E402
from shared.db.engine import engine_for_url  # noqa: E402
from shared.db.schema import alert_outbox, run_chunks  # noqa: E402
from shared.runs import records  # noqa: E402
from shared.runs.windows import Window  # noqa: E402
from shared.settings import AlertSettings, Settings  # noqa: E402
from tests.receivers import Receiver, self_signed  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--history", type=int, default=6)
    parser.add_argument("--flagged", type=float, default=0.02)
    parser.add_argument("--gap", type=int, default=5, help="EVENT_GAP_BUCKETS (5: events close)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = self_signed(Path(tmp))
        os.environ["REQUESTS_CA_BUNDLE"] = str(cert)
        receiver = Receiver(cert, key).start()
        settings = dataclasses.replace(
            Settings.from_env({"DATA_DIR": tmp}),
            alerts=AlertSettings(
                webhook_urls=(f"{receiver.url}/h",), webhook_secret="bench-secret-0123456789"
            ),
        )
        engine = engine_for_url(f"sqlite:///{tmp}/bench.db")
        migrate.upgrade(engine)
        rng = np.random.default_rng(7)
        ids = [
            (f"device-{d:04d}", f"sensor-{s:02d}")
            for d in range(args.sensors // 10)
            for s in range(10)
        ]
        outbox_s, again_s, queued = [], [], 0
        for h in range(args.history + 1):
            window = Window(START + timedelta(hours=h), START + timedelta(hours=h + 1))
            run, _ = records.create_run(engine, window, "timer", "local", records.RunFilters())
            with engine.begin() as conn:
                conn.execute(
                    insert(run_chunks),
                    [
                        {
                            "run_id": run.run_id,
                            "chunk_id": "c00000",
                            "blob_path": "x",
                            "n_sensors": len(ids),
                            "n_rows": 60 * len(ids),
                            "status": records.CHUNK_WRITTEN,
                            "n_predictions": 0,
                            "n_anomalies": 0,
                            "n_errors": 0,
                        }
                    ],
                )
            flags = flags_for(rng, len(ids), 60, args.flagged)
            scores = np.where(
                flags, rng.uniform(0.5, 1.0, flags.shape), rng.uniform(0, 0.5, flags.shape)
            )
            rows = rows_for(run.run_id, window, ids, flags, scores)
            for attempt in range(2):
                mark = utcnow()
                record_chunk(engine, run.run_id, rows, args.gap)
                with engine.begin() as conn:
                    t0 = time.perf_counter()
                    added = enqueue_for_chunk(conn, settings, run.run_id, "c00000", mark)
                    took = time.perf_counter() - t0
                if attempt == 0:
                    queued += added.notifications
                    if h >= args.history - 4:
                        outbox_s.append(took)
                else:
                    assert added.notifications == 0, added
                    if h >= args.history - 4:
                        again_s.append(took)
        t0 = time.perf_counter()
        sent = 0
        while True:
            report = deliver_pending(engine, settings, limit=500)
            if not report.sent and not report.retried:
                break
            sent += report.sent
        send_s = time.perf_counter() - t0
        with engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(alert_outbox)).scalar_one()
        receiver.stop()
        engine.dispose()
    assert sent == total == queued == len(receiver.delivered()), (sent, total, queued)
    print(
        f"outbox step per chunk ({args.sensors} sensors, {args.flagged:.0%} flagged): "
        f"{statistics.median(outbox_s) * 1000:.1f} ms; on a redelivery "
        f"{statistics.median(again_s) * 1000:.1f} ms"
    )
    print(f"delivered {sent} signed webhook notifications in {send_s:.2f} s: {sent / send_s:.0f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
