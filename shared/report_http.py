"""The HTTP handler of a run's report (:mod:`shared.report`), declared in :mod:`shared.runs.routes`
with the other run routes."""

from __future__ import annotations

import azure.functions as func

from shared.api import error
from shared.context import AppContext
from shared.report import build_run_report


def report_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    run_id = req.route_params.get("run_id", "")
    page = build_run_report(ctx, run_id)
    if page is None:
        return error(404, f"no run {run_id!r}")
    return func.HttpResponse(page, status_code=200, mimetype="text/html", charset="utf-8")
