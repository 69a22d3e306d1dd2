"""Detection quality with default settings, through the product's own paths (SQLite + Azurite):

* simulated fleets (seeds 1-3, 10 devices x 5 sensors, anomalies injected in the last hour):
  bucket precision and recall against the injected labels;
* NAB realAWSCloudwatch (../shared/data/nab): per file and overall window recall, false alarm
  share and share of buckets flagged (5-minute buckets, the data's own interval).

    .venv/bin/python bench/bench_quality.py
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.context import AppContext, set_context  # noqa: E402
from shared.db import migrate  # noqa: E402
from shared.evaluation import evaluate_nab, evaluate_simulated  # noqa: E402
from shared.local.azurite import start_azurite  # noqa: E402
from shared.settings import Settings  # noqa: E402

NAB = Path(__file__).resolve().parents[2] / "shared" / "data" / "nab"


def context(tmp: Path, name: str, connection: str, **extra: str) -> AppContext:
    settings = Settings.from_env(
        {
            "DATA_DIR": str(tmp),
            "SQL_URL": f"sqlite:///{tmp / name}",
            "ScoringStorage": connection,
            **extra,
        }
    )
    ctx = AppContext.create(settings)
    migrate.upgrade(ctx.engine)
    set_context(ctx)
    return ctx


def main() -> int:
    logging.getLogger().setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    azurite = start_azurite(tmp / "azurite")
    try:
        for seed in (1, 2, 3):
            ctx = context(tmp, f"sim{seed}.db", azurite.connection_string)
            print(f"simulated, seed {seed}: {evaluate_simulated(ctx, seed=seed).summary()}")
        if NAB.exists():
            ctx = context(
                tmp,
                "nab.db",
                azurite.connection_string,
                BUCKET_SECONDS="300",
                MAX_WINDOW_HOURS="1000",
            )
            print(evaluate_nab(ctx, NAB).table())
        else:
            print(f"NAB data not found at {NAB}")
    finally:
        azurite.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
