"""Detection quality with default settings, through the product's own paths (SQLite + Azurite).

* NAB (../shared/data/nab, 44 labelled series in five categories): the product is replayed over
  every series as production runs it (``python -m shared.cli evaluate nab``: daily windows,
  scheduled retraining, causal scores, one alert per anomaly event), once with the default
  detector and once with the reference one-class SVM; NAB's official scorer
  (../shared/tools/nab/score.py, fixed threshold 0.5 = the default sensitivity) scores both, and
  the table puts them beside NAB's published detectors on exactly the same files.
* Simulated fleets (seeds 1-3, 10 devices x 5 sensors, anomalies injected in the last hour):
  bucket precision and recall against the injected labels.

    .venv/bin/python bench/bench_quality.py [--skip-simulated] [--skip-reference]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAB_DATA = ROOT.parent / "shared" / "data" / "nab"
NAB_SCORER = ROOT.parent / "shared" / "tools" / "nab" / "score.py"
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


def replay(out: Path, detector: str, estimator: str | None) -> dict:
    command = [
        sys.executable, "-m", "shared.cli", "evaluate", "nab",
        "--data", str(NAB_DATA), "--labels", str(NAB_DATA / "labels.json"),
        "--out", str(out), "--detector", detector,
    ]  # fmt: skip
    if estimator:
        command += ["--estimator", estimator]
    subprocess.run(
        command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return json.loads((out / f"{detector}_summary.json").read_text())


def score(out: Path, detector: str) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            str(NAB_SCORER),
            "--results",
            str(out),
            "--data",
            str(NAB_DATA),
            "--labels",
            str(NAB_DATA / "labels.json"),
            "--detector",
            detector,
            "--jobs",
            "2",
        ],  # fmt: skip
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def simulated() -> None:
    from shared.context import AppContext, set_context
    from shared.db import migrate
    from shared.evaluation import evaluate_simulated
    from shared.local.azurite import start_azurite
    from shared.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    azurite = start_azurite(tmp / "azurite")
    try:
        for seed in (1, 2, 3):
            settings = Settings.from_env(
                {
                    "DATA_DIR": str(tmp),
                    "SQL_URL": f"sqlite:///{tmp / f'sim{seed}.db'}",
                    "ScoringStorage": azurite.connection_string,
                }
            )
            ctx = AppContext.create(settings)
            migrate.upgrade(ctx.engine)
            set_context(ctx)
            print(f"simulated, seed {seed}: {evaluate_simulated(ctx, seed=seed).summary()}")
            set_context(None)
    finally:
        azurite.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-simulated", action="store_true")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--out", help="keep the NAB results here (default: a temporary folder)")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    if not args.skip_simulated:
        simulated()
    if not NAB_DATA.exists() or not NAB_SCORER.exists():
        print(f"NAB data or scorer not found beside the repository ({NAB_DATA}, {NAB_SCORER})")
        return 0
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-nab-"))
    ours = [("product", None)] + ([] if args.skip_reference else [("reference", "ocsvm")])
    scores, summaries = {}, {}
    for detector, estimator in ours:
        summaries[detector] = replay(out, detector, estimator)
        scores[detector] = score(out, detector)
    first = scores[ours[0][0]]
    rows = {f"{name} (this product)": s["normalized"] for name, s in scores.items()}
    rows |= {name: values for name, values in first["comparison"]["published"].items()}
    print(
        f"\nNAB, {first['files']} files, threshold 0.5 (scores normalized: 100 = perfect, 0 = null)"
    )
    print(f"{'detector':<34}{'standard':>10}{'low FP':>10}{'low FN':>10}")
    ranked = sorted(rows.items(), key=lambda kv: -(kv[1].get("standard") or -1e9))
    for name, values in ranked:
        cells = "".join(
            f"{values[p]:>10.1f}" if values.get(p) is not None else f"{'n/a':>10}" for p in PROFILES
        )
        print(f"{name:<34}{cells}")
    for detector, summary in summaries.items():
        worst = max(summary["series"], key=lambda s: s["flag_share"])
        print(
            f"{detector}: window recall {summary['window_recall']:.2f}, alerts outside windows "
            f"{summary['false_alert_share']:.2f}, most flagged series {worst['name']} "
            f"{worst['flag_share']:.1%} of scored rows, {summary['runs']} runs"
        )
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
