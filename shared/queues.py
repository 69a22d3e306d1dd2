"""Storage queues: the run-request queue that moves on-demand run preparation out of HTTP.

``POST /api/runs`` records the run and sends one message here; the queue-triggered function
``prepare_run_request`` (``function_app.py``) prepares and submits it. The queue lives on the
same storage account as the scoring containers and uses the same connection (``ScoringStorage``:
a connection string, or identity-based with ``__queueServiceUri`` / ``__accountName``).

Messages are small JSON documents, ``{"run_id": "..."}``, Base64-encoded on the wire: the
Functions queue extension decodes Base64 by default (``extensions.queues.messageEncoding`` in
``host.json``), so what the app sends and what the trigger receives agree. After
``maxDequeueCount`` failed attempts the host moves a message to ``<queue>-poison``
(:func:`poison_queue_name`), where a second trigger fails the run with the reason.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient, QueueServiceClient

from shared.settings import Connection, Settings

POISON_SUFFIX = "-poison"
MESSAGE_VERSION = 1


def poison_queue_name(queue: str) -> str:
    """The queue the Functions host moves a message to after its last failed attempt."""
    return f"{queue}{POISON_SUFFIX}"


def queue_service_client(connection: Connection) -> QueueServiceClient:
    """A queue service client from a connection string or an identity-based connection, with
    the same bounded retries and timeouts as the blob client (``storage_client_options``)."""
    if connection.connection_string:
        return QueueServiceClient.from_connection_string(
            connection.connection_string, **_client_options()
        )
    if not connection.queue_endpoint:
        raise ValueError(
            f"{connection.name} has no queue endpoint: set {connection.name}__queueServiceUri "
            f"or {connection.name}__accountName (the run-request queue needs it)"
        )
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    credential = (
        ManagedIdentityCredential(client_id=connection.client_id)
        if connection.client_id
        else DefaultAzureCredential()
    )
    return QueueServiceClient(
        account_url=connection.queue_endpoint, credential=credential, **_client_options()
    )


def _client_options() -> dict:
    from azure.storage.queue import ExponentialRetry

    from shared.blobs import storage_client_options

    return storage_client_options(ExponentialRetry)


def encode_message(payload: dict[str, Any]) -> str:
    """JSON, then Base64: the wire format the Functions queue extension decodes by default."""
    return base64.b64encode(json.dumps(payload, sort_keys=True).encode()).decode("ascii")


def decode_wire_text(text: str) -> bytes:
    """What the host hands the function for a message's wire text: the Base64-decoded bytes,
    or the raw text when it is not Base64 (it reaches the function, which drops it)."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return text.encode("utf-8", errors="replace")


class MalformedRunRequest(ValueError):
    """A run-request message that no retry can make valid (the message says why)."""


@dataclass(frozen=True)
class RunRequest:
    run_id: str

    def as_payload(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "v": MESSAGE_VERSION}

    @classmethod
    def parse(cls, body: bytes | str | None) -> RunRequest:
        """Parse a decoded message body; raise :class:`MalformedRunRequest` if it is not one."""
        if body is None:
            raise MalformedRunRequest("empty message")
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MalformedRunRequest(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MalformedRunRequest("not a JSON object")
        run_id = data.get("run_id")
        if not isinstance(run_id, str) or not run_id or len(run_id) > 64:
            raise MalformedRunRequest("no run_id string (at most 64 characters)")
        return cls(run_id)


class RunQueue:
    """Sending run requests (and, for the local host, reaching the queues themselves)."""

    def __init__(self, service: QueueServiceClient, name: str):
        self.service = service
        self.name = name
        self._ensured: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> RunQueue:
        return cls(queue_service_client(settings.storage), settings.runs_queue)

    @property
    def poison_name(self) -> str:
        return poison_queue_name(self.name)

    def client(self, name: str | None = None) -> QueueClient:
        """A client of the run queue (or of ``name``), created on first use. In Azure the
        queues come from Bicep; creating is for Azurite and harmless where they exist."""
        name = name or self.name
        client = self.service.get_queue_client(name)
        if name not in self._ensured:
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()
            self._ensured.add(name)
        return client

    def send(self, request: RunRequest) -> str:
        """Enqueue a run request; returns the message id."""
        sent = self.client().send_message(encode_message(request.as_payload()))
        return sent.id


_queues: dict[tuple[Connection, str], RunQueue] = {}


def run_queue_for(settings: Settings) -> RunQueue:
    """The process's client of the run-request queue for these settings (built once)."""
    key = (settings.storage, settings.runs_queue)
    if key not in _queues:
        _queues[key] = RunQueue.from_settings(settings)
    return _queues[key]
