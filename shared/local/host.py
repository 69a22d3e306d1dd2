"""A local stand-in for the Functions host: drives the app's own trigger functions.

The host cannot run here (it needs the Functions runtime), so this module plays its part for
the demo, the CLI and the tests: it imports ``function_app`` (the one place in ``shared`` that
does, deliberately and lazily: it is the host's role), builds the same ``azure.functions``
objects the host would, and calls the user functions:

* Event Hubs batches of ``EventHubEvent`` with partition, sequence numbers and enqueued times;
* a ``TimerRequest`` for the schedule;
* each new predictions blob as an ``InputStream``, like the Event Grid blob trigger;
* each message of the run-request queue (and its poison queue) as a ``QueueMessage``, with the
  host's retry and poison rules from ``host.json`` (real Azurite queues, not a stand-in).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
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


def fire_timer(past_due: bool = False, function: str = "scheduled_run") -> None:
    """Fire a timer function (``scheduled_run``, or ``scheduled_training``) once."""
    user_function(function)(TimerRequest(past_due=past_due))


def deliver_predictions(
    ctx: AppContext, run_id: str | None = None, seen: set[str] | None = None
) -> list[str]:
    """Deliver every predictions blob (of a run, or all) not in ``seen`` to the blob trigger,
    as Event Grid would after each upload; returns the names delivered.

    Like the host, up to ``extensions.blobs.maxDegreeOfParallelism`` (host.json) calls run at
    once, on threads of this process (the Python worker runs sync functions on a thread pool):
    recording is mostly the database taking a COPY, which concurrent calls overlap. On SQLite,
    which takes one writer at a time, they run one after another. A failing call is raised
    once the others are done; what was recorded stays in ``seen``."""
    container = ctx.settings.predictions_container
    prefix = f"runs/{run_id}/" if run_id else "runs/"
    record = user_function("record_predictions")
    names = [
        name
        for name in ctx.store.list(container, prefix)
        if name.endswith(PREDICTIONS_SUFFIX) and (seen is None or name not in seen)
    ]

    def deliver(name: str) -> str:
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
        if seen is not None:
            seen.add(name)
        return name

    workers = 1 if ctx.engine.dialect.name == "sqlite" else _blob_parallelism()
    if workers == 1 or len(names) < 2:
        return [deliver(name) for name in names]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blob-trigger") as pool:
        calls = [pool.submit(deliver, name) for name in names]
    return [call.result() for call in calls]


def _blob_parallelism() -> int:
    """``extensions.blobs.maxDegreeOfParallelism`` of host.json (1 when absent)."""
    return max(1, int(_host_extensions().get("blobs", {}).get("maxDegreeOfParallelism", 1)))


def _host_extensions() -> dict:
    import json
    from pathlib import Path

    host = json.loads((Path(__file__).resolve().parents[2] / "host.json").read_text())
    return host.get("extensions", {})


def _queue_options() -> dict:
    """``extensions.queues`` of host.json: what the host's queue listener obeys."""
    return _host_extensions().get("queues", {})


def _seconds(timespan: str) -> int:
    hours, minutes, seconds = timespan.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + int(float(seconds))


def deliver_queue(
    ctx: AppContext,
    function_name: str,
    queue_name: str,
    retry_after_seconds: int | None = None,
    max_messages: int = 1000,
) -> list[tuple[str, str]]:
    """Deliver the visible messages of a storage queue to a queue-triggered function, as the
    host's queue listener does: the message body Base64-decoded (``messageEncoding``), deleted
    when the function returns; when it raises, made visible again after ``visibilityTimeout``
    (``retry_after_seconds`` overrides it), or moved to ``<queue>-poison`` once its dequeue
    count reaches ``maxDequeueCount``. Returns (message id, "done" | "retry" | "poisoned")."""
    from azure.functions.queue import QueueMessage

    from shared.queues import decode_wire_text, poison_queue_name, run_queue_for

    options = _queue_options()
    max_dequeue = int(options.get("maxDequeueCount", 5))
    if retry_after_seconds is None:
        retry_after_seconds = _seconds(options.get("visibilityTimeout", "00:00:00"))
    queues = run_queue_for(ctx.settings)
    client = queues.client(queue_name)
    function = user_function(function_name)
    outcomes: list[tuple[str, str]] = []
    # Invisible to others for 10 minutes while a message is handled (the host renews its lease).
    received = client.receive_messages(
        messages_per_page=1, max_messages=max_messages, visibility_timeout=600
    )
    for message in received:
        if message.dequeue_count > max_dequeue:  # already over: straight to poison, as the host
            _to_poison(queues, queue_name, message, poison_queue_name)
            outcomes.append((message.id, "poisoned"))
            continue
        try:
            function(
                QueueMessage(
                    id=message.id,
                    body=decode_wire_text(message.content),
                    dequeue_count=message.dequeue_count,
                    pop_receipt=message.pop_receipt,
                    insertion_time=message.inserted_on,
                    expiration_time=message.expires_on,
                    time_next_visible=message.next_visible_on,
                )
            )
        except Exception:  # noqa: BLE001 - the host logs it and retries the message
            if message.dequeue_count >= max_dequeue:
                _to_poison(queues, queue_name, message, poison_queue_name)
                outcomes.append((message.id, "poisoned"))
            else:
                client.update_message(
                    message, pop_receipt=message.pop_receipt, visibility_timeout=retry_after_seconds
                )
                outcomes.append((message.id, "retry"))
            continue
        client.delete_message(message)
        outcomes.append((message.id, "done"))
    return outcomes


def _to_poison(queues, queue_name: str, message, poison_queue_name) -> None:
    queues.client(poison_queue_name(queue_name)).send_message(message.content)
    queues.client(queue_name).delete_message(message)


def deliver_run_requests(
    ctx: AppContext, retry_after_seconds: int | None = None, max_messages: int = 1000
) -> list[tuple[str, str]]:
    """Deliver the run-request queue to ``prepare_run_request`` (at most ``max_messages``
    deliveries), then its poison queue to ``fail_poisoned_run_request`` (what the host's two
    queue listeners do)."""
    from shared.queues import poison_queue_name

    queue = ctx.settings.runs_queue
    outcomes = deliver_queue(ctx, "prepare_run_request", queue, retry_after_seconds, max_messages)
    outcomes += deliver_queue(ctx, "fail_poisoned_run_request", poison_queue_name(queue))
    return outcomes
