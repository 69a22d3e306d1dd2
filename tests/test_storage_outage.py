"""A storage outage fails an attempt in seconds, so the triggers' own retry policies govern.

The SDK's defaults held each call ~80 s against an unreachable account (3 retries after 15, 18
and 24 s), so dead-lettering, writing chunks or queueing a run blocked a trigger for minutes.
Measured here against a real closed port (connection refused) with the app's own clients.
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from azure.core.exceptions import AzureError

from shared.blobs import (
    CONNECT_TIMEOUT_SECONDS,
    READ_TIMEOUT_SECONDS,
    STORAGE_RETRIES,
    BlobStore,
    service_client,
)
from shared.local.azurite import free_port
from shared.queues import RunQueue, RunRequest, queue_service_client
from shared.settings import Settings

# Two retries after ~1 s and ~3 s (+-1 s of jitter each), plus slack for a loaded machine.
BOUND_SECONDS = 12.0


def _down_settings(tmp_path) -> Settings:
    port = free_port()
    key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    return Settings.from_env(
        {
            "DATA_DIR": str(tmp_path),
            "ScoringStorage": (
                f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};"
                f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
                f"QueueEndpoint=http://127.0.0.1:{port + 1}/devstoreaccount1;"
            ),
        }
    )


def _timed(call) -> float:
    started = time.monotonic()
    with pytest.raises(AzureError):
        call()
    return time.monotonic() - started


def test_blob_calls_fail_in_seconds_when_storage_is_down(tmp_path):
    store = BlobStore.from_settings(_down_settings(tmp_path))
    assert _timed(lambda: store.upload("deadletters", "x.jsonl", b"{}\n")) < BOUND_SECONDS
    assert _timed(lambda: store.download("chunks", "runs/r/c.parquet")) < BOUND_SECONDS


def test_queueing_a_run_fails_in_seconds_when_storage_is_down(tmp_path):
    queue = RunQueue.from_settings(_down_settings(tmp_path))
    assert _timed(lambda: queue.send(RunRequest("r-1"))) < BOUND_SECONDS


def test_dead_lettering_fails_in_seconds_after_storing_the_readings(tmp_path, sqlite_url):
    """Ingestion with storage down: the readings are committed first (nothing lost), then the
    dead letter fails fast and raises, so the host retries the batch (idempotently)."""
    import sqlalchemy as sa

    from shared.db import migrate
    from shared.db.engine import engine_for_url
    from shared.db.schema import readings
    from shared.ingestion import ingest_events
    from tests.helpers import event

    engine = engine_for_url(sqlite_url)
    migrate.upgrade(engine)
    store = BlobStore.from_settings(_down_settings(tmp_path))
    good = {"device": "d", "sensor": "s", "ts": "2026-05-01T00:00:00Z", "value": 1.0}
    took = _timed(
        lambda: ingest_events(
            [event([good, {"bad": 1}], 1)], engine, store, "deadletters", "0", datetime(2026, 5, 2)
        )
    )
    assert took < BOUND_SECONDS
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(readings)).scalar_one() == 1
    engine.dispose()


def test_clients_bound_retries_and_socket_timeouts(tmp_path):
    """A silent endpoint (accepts, never answers) is bounded by the read timeout on each of the
    few attempts: the configuration the clients are built with."""
    settings = _down_settings(tmp_path)
    for client in (service_client(settings.storage), queue_service_client(settings.storage)):
        assert client._config.retry_policy.total_retries == STORAGE_RETRIES == 2
        connection = client._config.transport.connection_config
        assert connection.timeout == CONNECT_TIMEOUT_SECONDS <= 5
        assert connection.read_timeout == READ_TIMEOUT_SECONDS <= 10
