"""Structured logging, and Application Insights through OpenTelemetry when configured.

Log records carry context as ``extra`` fields (run_id, chunk_id, device, sensor, counts). Locally
they are printed as one JSON object per line; in Azure, when
``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set, ``azure-monitor-opentelemetry`` exports logs
and traces (the extra fields become custom dimensions). Without it nothing is exported and
nothing breaks.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_configured = False


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and every extra field."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def context_fields(record: logging.LogRecord) -> dict:
    """The extra (non-standard) fields of a record: what a test asserts on."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _telemetry_credential():
    """Entra credential for Application Insights when local (key) auth is disabled.

    ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` is ``ClientId=<id>;Authorization=AAD`` (the
    Functions host's convention for the same setting): the app then sends telemetry as that
    user-assigned managed identity. Unset, the connection string's key is used.
    """
    auth = os.environ.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "")
    if "Authorization=AAD" not in auth:
        return None
    parts = dict(p.split("=", 1) for p in auth.split(";") if "=" in p)
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=parts.get("ClientId") or None)


def configure_logging(
    level: str | None = None, stream=None, json_lines: bool | None = None
) -> None:
    """Set up logging once per process (idempotent).

    Inside the Functions host the worker owns the root handler, so only the level is set and,
    when configured, the Azure Monitor exporter is added. Elsewhere (CLI, local runner) a
    handler writing JSON lines (or plain text for a terminal) goes to ``stream``.
    """
    global _configured
    if _configured:
        return
    _configured = True
    level = (level or os.environ.get("LOG_LEVEL") or "INFO").upper()
    root = logging.getLogger()
    root.setLevel(level)
    # Chatty SDK loggers stay at WARNING: a blob upload is not news.
    for name in ("azure", "urllib3", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    connection = os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING")
    if connection:
        from azure.monitor.opentelemetry import configure_azure_monitor

        configure_azure_monitor(
            connection_string=connection, logger_name="", credential=_telemetry_credential()
        )
    in_host = "FUNCTIONS_WORKER_RUNTIME" in os.environ
    if not in_host and stream is not None:
        handler = logging.StreamHandler(stream)
        if json_lines is False:
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        else:
            handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
