"""Small helpers shared by tests: reaching the user functions behind the Functions decorators."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import azure.functions as func

from shared.local.host import functions, user_function  # noqa: F401 - re-exported


def functions_by_name() -> dict:
    return functions()


def event(body, sequence_number: int, partition: str = "0") -> func.EventHubEvent:
    """A real ``azure.functions.EventHubEvent`` as the host builds it for a batch trigger."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return func.EventHubEvent(
        body=raw,
        enqueued_time=datetime(2026, 1, 1, tzinfo=UTC),
        partition_key=None,
        sequence_number=sequence_number,
        offset=str(sequence_number * 100),
    )
