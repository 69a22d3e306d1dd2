"""Cold-start benchmark: what the Functions host pays to import ``function_app.py``, and what the
first call of a function adds.

Each figure comes from a fresh interpreter (a new process per measurement, as a new worker is),
and is the minimum over ``--runs`` runs (the least disturbed by other load on the machine):

- ``import``: wall time of ``import function_app``, and the process's peak RSS after it, beside
  that of a bare interpreter (so the app's own share shows);
- ``-X importtime``: the modules that cost most, cumulative, from one more fresh import;
- ``first call``: in a fresh process that has imported function_app, the first call of
  ``list_runs`` (HTTP; builds the app context, opens SQL) and of ``ingest_readings`` (a batch of
  100 Event Hubs events into SQL), wall time and the RSS they add. SQLite in a temporary folder,
  migrated beforehand (not timed); no storage traffic happens on these paths.

    .venv/bin/python bench/bench_coldstart.py [--runs 7] [--top 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORT_PROBE = """
import json, resource, sys, time
t0 = time.perf_counter()
import function_app  # noqa: F401
elapsed = time.perf_counter() - t0
print(json.dumps({"seconds": elapsed,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "modules": len(sys.modules)}))
"""

BARE_PROBE = """
import json, resource
print(json.dumps({"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

FIRST_CALL_PROBE = """
import json, resource, sys, time
import function_app
import azure.functions as func

def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

which = sys.argv[1]
if which == "list_runs":
    request = func.HttpRequest("GET", "http://localhost/api/runs", params={}, body=b"")
    # HTTP functions are registered from their route declarations (shared.routes), not as
    # module attributes: take the user function the host would call.
    functions = {f.get_function_name(): f for f in function_app.app.get_functions()}
    list_runs = functions["list_runs"].get_user_function()
    call = lambda: list_runs(request)
else:
    from datetime import UTC, datetime, timedelta
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = [
        func.EventHubEvent(body=json.dumps({"device": "d1", "sensor": f"s{i % 10}",
            "ts": (start + timedelta(seconds=5 * i)).isoformat(), "value": float(i)}).encode())
        for i in range(100)
    ]
    call = lambda: function_app.ingest_readings(events)
before = rss()
t0 = time.perf_counter()
result = call()
elapsed = time.perf_counter() - t0
status = getattr(result, "status_code", None)
print(json.dumps({"seconds": elapsed, "rss_added_mib": rss() - before, "status": status,
                  "modules": len(sys.modules)}))
"""


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update({"DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)})
    # A local run: no Application Insights exporter, whatever the shell has.
    env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING", None)
    return env


def _probe(code: str, env: dict[str, str], *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def import_times(env: dict[str, str], top: int) -> list[dict]:
    """The ``top`` modules by cumulative import time (``-X importtime``, microseconds)."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import function_app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    rows = []
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append(
                {
                    "module": m.group(4),
                    "self_ms": int(m.group(1)) / 1000,
                    "cumulative_ms": int(m.group(2)) / 1000,
                    "depth": len(m.group(3)) // 2,
                }
            )
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp:
        env = _env(Path(tmp))
        subprocess.run(
            [sys.executable, "-m", "shared.cli", "db", "upgrade"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            check=True,
        )
        bare = min(_probe(BARE_PROBE, env)["rss_mib"] for _ in range(args.runs))
        imports = [_probe(IMPORT_PROBE, env) for _ in range(args.runs)]
        first_calls = {
            name: [_probe(FIRST_CALL_PROBE, env, name) for _ in range(args.runs)]
            for name in ("list_runs", "ingest_readings")
        }
        top = import_times(env, args.top)

    result = {
        "runs": args.runs,
        "import_seconds_min": min(r["seconds"] for r in imports),
        "import_seconds_median": sorted(r["seconds"] for r in imports)[len(imports) // 2],
        "import_rss_mib": min(r["rss_mib"] for r in imports),
        "bare_interpreter_rss_mib": bare,
        "import_rss_added_mib": min(r["rss_mib"] for r in imports) - bare,
        "modules_after_import": imports[0]["modules"],
        "first_call": {
            name: {
                "seconds_min": min(r["seconds"] for r in rows),
                "rss_added_mib": min(r["rss_added_mib"] for r in rows),
                "status": rows[0]["status"],
                "modules_after_call": rows[0]["modules"],
            }
            for name, rows in first_calls.items()
        },
        "importtime_top": top,
    }
    print(
        f"import function_app   {result['import_seconds_min']:.3f} s (min of {args.runs}; "
        f"median {result['import_seconds_median']:.3f} s)"
    )
    print(
        f"  peak RSS            {result['import_rss_mib']:.0f} MiB "
        f"({result['import_rss_added_mib']:.0f} MiB over a bare interpreter's {bare:.0f} MiB), "
        f"{result['modules_after_import']} modules"
    )
    for name, fc in result["first_call"].items():
        print(
            f"first call {name:<17} {fc['seconds_min']:.3f} s, +{fc['rss_added_mib']:.0f} MiB, "
            f"{fc['modules_after_call']} modules"
        )
    print("\n-X importtime, top modules by cumulative time (one fresh run):")
    for row in top:
        print(f"  {row['cumulative_ms']:8.1f} ms  {'  ' * row['depth']}{row['module']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
