"""A local stand-in for the Functions host: drives the app's own trigger functions.

The host cannot run here (it needs the Functions runtime), so this module plays its part for
the demo, the CLI and the tests: it imports ``function_app`` (the one place in ``shared`` that
does, deliberately and lazily: it is the host's role), builds the same ``azure.functions``
objects the host would, and calls the user functions:

* Event Hubs batches of ``EventHubEvent`` with partition, sequence numbers and enqueued times;
* a ``TimerRequest`` for the schedule;
* each new predictions blob as an ``InputStream``, like the Event Grid blob trigger.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

import azure.functions as func
from azure.functions.timer import TimerRequest

from shared.blobs import PREDICTIONS_SUFFIX
from shared.context import AppContext


@functools.cache
def functions() -> dict:
    """The app's indexed functions by name (what the host's indexing sees)."""
    app = importlib.import_module("function_app").app
    # get_functions() validates names and may run once per process: hence the cache.
    return {f.get_function_name(): f for f in app.get_functions()}


def user_function(name: str) -> Callable:
    """The plain Python function the host would invoke for function ``name``."""
    return functions()[name].get_user_function()


def deliver_events(
    bodies: Iterable[bytes],
    events_per_batch: int = 100,
    partition: str = "0",
    first_sequence: int = 0,
) -> Iterator[int]:
    """Feed event bodies to ``ingest_readings`` in host-sized batches; yields events delivered."""
    ingest = user_function("ingest_readings")
    batch: list[func.EventHubEvent] = []
    sequence = first_sequence
    for body in bodies:
        batch.append(
            func.EventHubEvent(
                body=body,
                sequence_number=sequence,
                offset=str(sequence),
                enqueued_time=datetime.now(UTC),
                partition_key=None,
                trigger_metadata=None,
            )
        )
        sequence += 1
        if len(batch) == events_per_batch:
            ingest(batch)
            yield len(batch)
            batch = []
    if batch:
        ingest(batch)
        yield len(batch)


def fire_timer(past_due: bool = False) -> None:
    user_function("scheduled_run")(TimerRequest(past_due=past_due))


def deliver_predictions(
    ctx: AppContext, run_id: str | None = None, seen: set[str] | None = None
) -> list[str]:
    """Deliver every predictions blob (of a run, or all) not in ``seen`` to the blob trigger,
    as Event Grid would after each upload; returns the names delivered."""
    container = ctx.settings.predictions_container
    prefix = f"runs/{run_id}/" if run_id else "runs/"
    record = user_function("record_predictions")
    delivered = []
    for name in ctx.store.list(container, prefix):
        if not name.endswith(PREDICTIONS_SUFFIX) or (seen is not None and name in seen):
            continue
        data = ctx.store.download(container, name)
        etag = ctx.store.etag(container, name)
        record(
            func.blob.InputStream(
                data=data,
                name=f"{container}/{name}",
                length=len(data),
                uri=ctx.store.url(container, name),
                blob_properties={"ETag": etag},
            )
        )
        delivered.append(name)
        if seen is not None:
            seen.add(name)
    return delivered
