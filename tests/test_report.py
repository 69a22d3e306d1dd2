"""The run report in a real browser (Debian's headless Chromium), and logs that carry run ids.

The report is fetched through the ``run_report`` function with a real ``HttpRequest`` (the
Functions host cannot run here), saved, and loaded by Chromium, which takes a screenshot and
dumps the DOM it rendered.
"""

import logging
import os
import shutil
import subprocess

import azure.functions as func
import numpy as np
import pytest
from PIL import Image

from shared.local.host import deliver_predictions, user_function
from shared.logs import context_fields
from shared.runs import records
from shared.runs.service import start_run
from tests import scenario

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def scored_run(ctx):
    sc = scenario.build(ctx, devices=2, sensors=3)
    run, _ = start_run(ctx, sc.window, "cli")
    deliver_predictions(ctx, run.run_id)
    return records.get_run(ctx.engine, run.run_id)


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_report_renders_in_chromium(ctx, scored_run, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; scripts/setup.sh --tests installs it")
        pytest.skip("chromium is not installed here")
    run = scored_run
    assert run.n_anomalies > 0
    req = func.HttpRequest(
        "GET",
        f"http://localhost/api/runs/{run.run_id}/report",
        body=b"",
        route_params={"run_id": run.run_id},
    )
    resp = user_function("run_report")(req)
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = tmp_path / "report.html"
    page.write_bytes(resp.get_body())

    dom = chromium(["--dump-dom", page.as_uri()], tmp_path).stdout
    assert f"Run {run.run_id}" in dom
    n_plots = dom.count('<svg class="plot"')
    assert n_plots >= 1
    assert dom.count('<circle class="flag"') == run.n_anomalies  # every flag drawn (< 40)
    assert '<polyline class="line"' in dom
    # The run's anomaly events: listed, and shaded on the plots of their sensors.
    from shared.events import run_events

    events = run_events(ctx.engine, run.run_id)
    assert events and f"Anomaly events ({len(events)})" in dom
    assert dom.count('<rect class="event"') >= 1
    # Why each event fired (its peak bucket's explanation), and the band the mean was expected
    # in drawn on every plot (each plotted sensor has a flag, so a band).
    import html

    assert "why (the peak bucket)" in dom
    for event in events:
        assert event.explanation is not None
        assert html.escape(event.explanation["summary"], quote=False) in dom
    assert dom.count('<polygon class="expected"') >= n_plots

    shot = tmp_path / "report.png"
    result = chromium(["--window-size=900,2400", f"--screenshot={shot}", page.as_uri()], tmp_path)
    assert shot.exists(), result.stderr[-2000:]
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    red = int(((r > 180) & (g < 80) & (b < 90)).sum())  # flagged buckets
    blue = int(((r < 40) & (g > 80) & (g < 130) & (b > 190)).sum())  # mean lines
    green = int(((g > r + 12) & (g > b + 8)).sum())  # expected bands (translucent green)
    assert red > 20 and blue > 200 and green > 2000, (red, blue, green)


def test_unknown_run_report_is_404(ctx):
    req = func.HttpRequest(
        "GET", "http://localhost/api/runs/nope/report", body=b"", route_params={"run_id": "nope"}
    )
    assert user_function("run_report")(req).status_code == 404


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_logs_carry_run_and_chunk_ids(ctx, caplog):
    sc = scenario.build(ctx, devices=1, sensors=2)
    caplog.set_level(logging.INFO)
    run, _ = start_run(ctx, sc.window, "cli")
    deliver_predictions(ctx, run.run_id)
    fields = [context_fields(r) for r in caplog.records]
    with_run = [f for f in fields if f.get("run_id") == run.run_id]
    assert {"run_id", "job_id"} <= set().union(*with_run)
    recorded = [f for f in with_run if "chunk_id" in f]
    assert recorded and recorded[0]["chunk_id"] == "c00000" and recorded[0]["rows"] == 120


def test_json_log_lines_include_context_fields():
    import io
    import json

    from shared.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning(
        "chunk failed",
        extra={"run_id": "run-1", "chunk_id": "c00002", "device": "d", "sensor": "s"},
    )
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "chunk failed"
    assert (entry["run_id"], entry["chunk_id"], entry["device"]) == ("run-1", "c00002", "d")


def test_report_tables_are_bounded_and_say_so(ctx, scored_run, monkeypatch):
    """A run of a large fleet flags too many sensors to list: the report sums flags in SQL and
    shows at most MAX_SENSOR_ROWS sensors (most flags first) and MAX_EVENT_ROWS events, and
    says that more exist."""
    from shared import report

    full = report.build_run_report(ctx, scored_run.run_id)
    assert "+, those with most flags shown" not in full
    monkeypatch.setattr(report, "MAX_SENSOR_ROWS", 1)
    monkeypatch.setattr(report, "MAX_EVENT_ROWS", 1)
    cut = report.build_run_report(ctx, scored_run.run_id)
    assert "Sensors with anomalies (1+, those with most flags shown)" in cut
    assert "Anomaly events (1+, the first shown)" in cut
