"""Azure Functions entry point (Python v2 programming model): thin trigger adapters.

Each function parses its trigger's input, calls one service in ``shared/``, logs and returns.
Names, schedules, containers and connections come from app settings (``%NAME%`` binding
expressions), the same settings ``shared.settings.Settings`` reads.
"""

from __future__ import annotations

import logging
from typing import List  # noqa: UP035 - the worker refuses list[...] (see ingest_readings)

import azure.functions as func

# Only what every cold start needs: each function imports its service when first called, so a
# host start does not load SQLAlchemy, the blob SDK or pandas for functions it may never run
# (bench/bench_coldstart.py; tests/test_worker_index.py imports those lazy imports too).
from shared.context import get_context
from shared.logs import configure_logging
from shared.routes import registered_routes
from shared.settings import Settings

# Read and validate every setting now: a malformed one raises SettingsError naming the setting
# and its rule, which fails the worker's indexing, so the host starts no function and logs why
# (tests/test_worker_index.py), instead of every invocation failing later. Cheap: no SQLAlchemy
# or storage SDK is imported for it (tests/test_coldstart.py).
SETTINGS = Settings.from_env()
configure_logging(SETTINGS.log_level)
log = logging.getLogger("function_app")

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def _partition(events: List[func.EventHubEvent]) -> str | None:  # noqa: UP006
    """The partition id of a batch, from the trigger metadata the host passes with it."""
    try:
        context = events[0].metadata.get("PartitionContext") or {}
        return str(context.get("PartitionId")) if context.get("PartitionId") is not None else None
    except (AttributeError, IndexError, TypeError):
        return None


# Event Hubs: the fallback ingestion path beside Stream Analytics (same table, same keys).
# The host checkpoints after the function returns, so a failure redelivers the whole batch:
# the service is idempotent, and the retry policy spaces attempts while SQL recovers.
@app.function_name("ingest_readings")
@app.event_hub_message_trigger(
    arg_name="events",
    event_hub_name="%EVENTHUB_NAME%",
    connection="EventHubConnection",
    consumer_group="%EVENTHUB_CONSUMER_GROUP%",
    cardinality=func.Cardinality.MANY,
)
@app.retry(
    strategy="exponential_backoff",
    max_retry_count="5",
    minimum_interval="00:00:02",
    maximum_interval="00:01:00",
)
# typing.List, not list: the Functions Python worker accepts a bound parameter's annotation only
# if it is a class or a typing generic, and refuses `list[...]` ("invalid non-type annotation"),
# failing the whole index (tests/test_worker_index.py runs the worker's check).
def ingest_readings(events: List[func.EventHubEvent]) -> None:  # noqa: UP006
    from shared.ingestion import ingest_events

    ctx = get_context()
    result = ingest_events(
        events, ctx.engine, ctx.store, ctx.settings.deadletter_container, _partition(events)
    )
    log.info("ingest_readings done", extra=result.as_dict())


# Timer: the scheduled run. NCRONTAB from SCORING_SCHEDULE; use_monitor so a missed occurrence is
# still fired after a restart, and the service catches up older windows. A double fire is
# harmless: each window has a unique run key. No retry policy: a failed window is recorded as a
# failed run (retrying would find it there), and the next tick carries on.
@app.function_name("scheduled_run")
@app.schedule(
    arg_name="timer", schedule="%SCORING_SCHEDULE%", run_on_startup=False, use_monitor=True
)
def scheduled_run(timer: func.TimerRequest) -> None:
    from shared.runs.service import scheduled_tick

    runs = scheduled_tick(get_context())
    log.info(
        "scheduled_run done", extra={"past_due": timer.past_due, "runs": [r.run_id for r in runs]}
    )


# Timer: retraining (shared.training). NCRONTAB from TRAINING_SCHEDULE (daily by default); a
# sensor is trained at most once per occurrence, so a double or late fire is harmless. The timer
# decides who is due, writes the training chunks and submits a training job to the executor (the
# local pool trains here, as it scores; Azure ML trains on the cluster and the timer returns at
# once); completion registers the models through the fitness gate, exactly once.
@app.function_name("scheduled_training")
@app.schedule(
    arg_name="timer", schedule="%TRAINING_SCHEDULE%", run_on_startup=False, use_monitor=True
)
def scheduled_training(timer: func.TimerRequest) -> None:
    from shared.training.service import retrain_due

    report = retrain_due(get_context())
    log.info(
        "scheduled_training done",
        extra={"past_due": timer.past_due, "retraining": report.as_dict(limit=20)},
    )


# Blob trigger on predictions files, through Event Grid (the only source Flex Consumption
# supports, and immediate rather than polled). Delivered twice, recording changes nothing.
@app.function_name("record_predictions")
@app.blob_trigger(
    arg_name="blob",
    path="%PREDICTIONS_CONTAINER%/runs/{name}",
    connection="ScoringStorage",
    source=func.BlobSource.EVENT_GRID,
)
def record_predictions(blob: func.InputStream) -> None:
    from shared.runs.recording import record_predictions_blob

    etag = (blob.blob_properties or {}).get("ETag") if hasattr(blob, "blob_properties") else None
    result = record_predictions_blob(get_context(), blob.name or "", blob.read(), etag)
    log.info("record_predictions done", extra=result.__dict__)


# Storage queue: POST /api/runs records a run and queues it; the preparation (aggregate, write
# chunks, submit) runs here, outside the HTTP request's 230 s. A failure raises, so the host
# retries (host.json extensions.queues) and finally moves the message to the poison queue; a
# message no retry can fix (malformed, unknown run) is logged and dropped by the service.
@app.function_name("prepare_run_request")
@app.queue_trigger(arg_name="message", queue_name="%RUNS_QUEUE%", connection="ScoringStorage")
def prepare_run_request(message: func.QueueMessage) -> None:
    from shared.runs.service import handle_run_request

    outcome = handle_run_request(get_context(), message.get_body(), message.dequeue_count or 1)
    log.info("prepare_run_request done", extra={"message_id": message.id, "outcome": outcome})


# The poison queue of the above: the run whose preparation failed on every delivery ends failed
# with the last attempt's reason. Never raises because of the message (that would poison it too).
@app.function_name("fail_poisoned_run_request")
@app.queue_trigger(
    arg_name="message", queue_name="%RUNS_QUEUE%-poison", connection="ScoringStorage"
)
def fail_poisoned_run_request(message: func.QueueMessage) -> None:
    from shared.runs.service import handle_poisoned_run_request

    outcome = handle_poisoned_run_request(get_context(), message.get_body())
    log.info("fail_poisoned_run_request done", extra={"message_id": message.id, "outcome": outcome})


# Timer: alerts left in the outbox (a receiver was down, or the send after a recording was cut
# short) are sent here, with their backoff; every 5 minutes, a query when nothing is due.
@app.function_name("deliver_alerts")
@app.schedule(arg_name="timer", schedule="0 */5 * * * *", run_on_startup=False, use_monitor=False)
def deliver_alerts(timer: func.TimerRequest) -> None:
    from shared.alerts.delivery import deliver_pending

    ctx = get_context()
    if not ctx.settings.alerts.enabled:
        return
    report = deliver_pending(ctx.engine, ctx.settings)
    log.info("deliver_alerts done", extra=report.as_dict())


# HTTP: every route is declared once (shared.routes: runs, anomaly events, alerts, feedback, the
# OpenAPI document) and registered here from its declaration, which the OpenAPI document is
# derived from as well (tests/test_routes.py checks the three sets are one). The handler module
# is imported on the first call; shared.api.handle strips the function key and maps errors.
def _http(route):
    def call(req: func.HttpRequest) -> func.HttpResponse:
        from shared import api

        return api.handle(route.resolve(), get_context(), req)

    call.__name__ = route.name
    call.__qualname__ = route.name
    return call


for _route in registered_routes():
    app.function_name(_route.name)(
        app.route(route=_route.path, methods=[_route.method])(_http(_route))
    )
