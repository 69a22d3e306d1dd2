"""Small helpers shared by tests: reaching the user functions behind the Functions decorators."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime

import azure.functions as func


@functools.cache
def functions_by_name() -> dict:
    # FunctionApp.get_functions() validates unique names and so may be called only once.
    import function_app

    return {f.get_function_name(): f for f in function_app.app.get_functions()}


def user_function(name: str):
    """The plain Python function the host would invoke for function ``name``."""
    return functions_by_name()[name].get_user_function()


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
