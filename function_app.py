"""Azure Functions entry point (Python v2 programming model): thin trigger adapters.

Each function parses its trigger's input, calls one service in ``shared/``, logs and returns.
Names, schedules, containers and connections come from app settings (``%NAME%`` binding
expressions), the same settings ``shared.settings.Settings`` reads.
"""

from __future__ import annotations

import logging

import azure.functions as func

from shared.context import get_context
from shared.ingestion import ingest_events
from shared.logs import configure_logging

configure_logging()
log = logging.getLogger("function_app")

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def _partition(events: list[func.EventHubEvent]) -> str | None:
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
def ingest_readings(events: list[func.EventHubEvent]) -> None:
    ctx = get_context()
    result = ingest_events(
        events, ctx.engine, ctx.store, ctx.settings.deadletter_container, _partition(events)
    )
    log.info("ingest_readings done", extra=result.as_dict())
