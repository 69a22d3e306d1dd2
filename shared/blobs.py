"""Blob Storage: the naming scheme of every blob the app writes, and a thin client over it.

One module owns the layout so that a newcomer (and the Event Grid filter in ``infra/``) finds it
in one place. Names are deterministic: derived from run ids, chunk ids, model-set ids and
Event Hubs sequence numbers, never from the wall clock, so re-running anything overwrites the
same blobs instead of adding copies.

Containers (names from settings)::

    models       sets/<set_id>.<ext>                        many models per file
                 training/<job_id>/<chunk_id>.training.json what a training step fitted (summary)
    chunks       runs/<run_id>/<chunk_id>.parquet           features for the scoring step
                 training/<job_id>/<chunk_id>.parquet       training window for the training step
    predictions  runs/<run_id>/<chunk_id>.predictions.parquet  <- the blob trigger fires here
                 runs/<run_id>/<chunk_id>.errors.parquet    per-sensor failures (written first)
    deadletters  eventhub/<partition>/<sequence>.jsonl      one event's rejects, with reasons
                 import/<file>-<sha256>.jsonl               one CSV file's rejected rows
    reports      runs/<run_id>/report.html
                 training/<window_end>.json                 what a retraining did (shared.training)
                 training/jobs/<job_id>.json                what a training job registered
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContentSettings

from shared.settings import Connection, Settings

PREDICTIONS_SUFFIX = ".predictions.parquet"
ERRORS_SUFFIX = ".errors.parquet"
_RUN_CHUNK = re.compile(r"^runs/(?P<run_id>[A-Za-z0-9_.-]+)/(?P<chunk_id>[A-Za-z0-9_-]+)")


def chunk_blob(run_id: str, chunk_id: str) -> str:
    return f"runs/{run_id}/{chunk_id}.parquet"


def run_prefix(run_id: str) -> str:
    """The folder of a run in the chunks and predictions containers."""
    return f"runs/{run_id}/"


def predictions_blob(run_id: str, chunk_id: str) -> str:
    return f"runs/{run_id}/{chunk_id}{PREDICTIONS_SUFFIX}"


def errors_blob(run_id: str, chunk_id: str) -> str:
    return f"runs/{run_id}/{chunk_id}{ERRORS_SUFFIX}"


def model_set_blob(file_name: str) -> str:
    return f"sets/{file_name}"


def deadletter_blob(source: str, key: str) -> str:
    return f"{source}/{key}.jsonl"


TRAINING_SUMMARY_SUFFIX = ".training.json"


def training_prefix(job_id: str) -> str:
    """The folder of a training job in the chunks container (its chunks) and in the models
    container (its steps' summaries)."""
    return f"training/{job_id}/"


def training_chunk_blob(job_id: str, chunk_id: str) -> str:
    return f"training/{job_id}/{chunk_id}.parquet"


def training_summary_blob(job_id: str, chunk_id: str) -> str:
    return f"training/{job_id}/{chunk_id}{TRAINING_SUMMARY_SUFFIX}"


def report_blob(run_id: str) -> str:
    return f"runs/{run_id}/report.html"


def training_report_blob(window_end: datetime) -> str:
    """The report of the retraining whose trailing window ends at ``window_end`` (naive UTC)."""
    return f"training/{window_end:%Y%m%dT%H%M%S}.json"


def training_job_report_blob(job_id: str) -> str:
    """What a training job registered, written when it ends (shared.training)."""
    return f"training/jobs/{job_id}.json"


@dataclass(frozen=True)
class PredictionsName:
    run_id: str
    chunk_id: str


def parse_predictions_blob(name: str) -> PredictionsName | None:
    """Run and chunk of a predictions blob name (with or without the container), else None."""
    name = name.split("/", 1)[1] if not name.startswith("runs/") and "/" in name else name
    if not name.endswith(PREDICTIONS_SUFFIX):
        return None
    match = _RUN_CHUNK.match(name[: -len(PREDICTIONS_SUFFIX)])
    if match is None or match.end() != len(name) - len(PREDICTIONS_SUFFIX):
        return None
    return PredictionsName(match["run_id"], match["chunk_id"])


# Storage SDK retries and timeouts, for blob and queue clients alike. The SDK's defaults (3
# retries after 15, 18 and 24 s, 20 s to connect, 60 s per read) held one attempt ~80 s
# against an unreachable account, and the host's retries multiplied that (an Event Hubs
# partition stood still ~7 minutes). Here a blip is retried twice within ~4 s, an outage fails
# the attempt in seconds (refused: ~4 s; a silent endpoint: 3 x READ_TIMEOUT_SECONDS + ~4 s), and
# the trigger's own retry policy (host.json, @app.retry) decides what happens next.
STORAGE_RETRIES = 2
STORAGE_BACKOFF_SECONDS = 1  # first retry after ~1 s, the second after ~1 + 2 s
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 10


def storage_client_options(retry_class=None) -> dict:
    """Keyword arguments bounding a storage client's retries and timeouts (see above);
    ``retry_class``: the SDK's ``ExponentialRetry`` (the blob package's by default)."""
    if retry_class is None:
        from azure.storage.blob import ExponentialRetry as retry_class

    return {
        "retry_policy": retry_class(
            initial_backoff=STORAGE_BACKOFF_SECONDS,
            increment_base=2,
            retry_total=STORAGE_RETRIES,
            random_jitter_range=1,
        ),
        "connection_timeout": CONNECT_TIMEOUT_SECONDS,
        "read_timeout": READ_TIMEOUT_SECONDS,
    }


def service_client(connection: Connection) -> BlobServiceClient:
    """A blob service client from a connection string or an identity-based connection, with
    bounded retries and timeouts (:func:`storage_client_options`)."""
    if connection.connection_string:
        return BlobServiceClient.from_connection_string(
            connection.connection_string, **storage_client_options()
        )
    if not connection.endpoint:
        raise ValueError(
            f"{connection.name} is not configured: set it to a connection string, or set "
            f"{connection.name}__accountName or {connection.name}__blobServiceUri"
        )
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    credential = (
        ManagedIdentityCredential(client_id=connection.client_id)
        if connection.client_id
        else DefaultAzureCredential()
    )
    return BlobServiceClient(
        account_url=connection.endpoint, credential=credential, **storage_client_options()
    )


class BlobStore:
    """The few blob operations the app needs, over one storage account."""

    def __init__(self, client: BlobServiceClient):
        self.client = client
        self._ensured: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> BlobStore:
        return cls(service_client(settings.storage))

    def ensure_container(self, container: str) -> None:
        if container in self._ensured:
            return
        with contextlib.suppress(ResourceExistsError):
            self.client.create_container(container)
        self._ensured.add(container)

    def upload(
        self, container: str, name: str, data: bytes, content_type: str | None = None
    ) -> str:
        """Write (overwrite) a blob; returns its ETag."""
        self.ensure_container(container)
        settings = ContentSettings(content_type=content_type) if content_type else None
        result = self.client.get_blob_client(container, name).upload_blob(
            data, overwrite=True, content_settings=settings, max_concurrency=2
        )
        return result["etag"]

    def upload_file(self, container: str, name: str, path: Path) -> str:
        self.ensure_container(container)
        with open(path, "rb") as handle:
            result = self.client.get_blob_client(container, name).upload_blob(
                handle, overwrite=True, max_concurrency=2
            )
        return result["etag"]

    def download(self, container: str, name: str) -> bytes:
        return self.client.get_blob_client(container, name).download_blob().readall()

    def open(self, container: str, name: str, keep: bool = False) -> RangedBlob:
        """The blob as a read-only, seekable file that fetches only the bytes read (see
        :class:`RangedBlob`); ``ResourceNotFoundError`` when there is no such blob."""
        return RangedBlob(self.client.get_blob_client(container, name), keep=keep)

    def download_to(self, container: str, name: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            self.client.get_blob_client(container, name).download_blob(max_concurrency=2).readinto(
                handle
            )

    def exists(self, container: str, name: str) -> bool:
        return self.client.get_blob_client(container, name).exists()

    def etag(self, container: str, name: str) -> str | None:
        try:
            return self.client.get_blob_client(container, name).get_blob_properties().etag
        except ResourceNotFoundError:
            return None

    def list(self, container: str, prefix: str = "") -> list[str]:
        try:
            return [
                b.name
                for b in self.client.get_container_client(container).list_blobs(
                    name_starts_with=prefix
                )
            ]
        except ResourceNotFoundError:
            return []

    def url(self, container: str, name: str) -> str:
        return self.client.get_blob_client(container, name).url


class RangedBlob(io.RawIOBase):
    """One version of a blob as a read-only, seekable file: each read is one ranged GET.

    For readers that need a few parts of a large blob, such as a Parquet reader wanting the
    footer and a few columns: only those bytes cross the network and sit in memory. Every read
    is conditioned on the ETag the blob had when opened, so a blob overwritten meanwhile fails
    the read (``ResourceModifiedError``) instead of mixing two versions' bytes. ``keep``: the
    ranges read are kept, so a second pass over the same parts (the same offset and length) is
    served from memory; they are that one version's bytes, so they stay valid.
    """

    def __init__(self, client, keep: bool = False):
        self._client = client
        self._kept: dict[tuple[int, int], bytes] | None = {} if keep else None
        properties = client.get_blob_properties()
        self.size = int(properties.size)
        self.etag = properties.etag
        self._at = 0
        self.fetched = 0  # bytes downloaded so far

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._at = base + offset
        return self._at

    def readinto(self, buffer) -> int:
        length = min(len(buffer), self.size - self._at)
        if length <= 0:
            return 0
        data = self._kept.get((self._at, length)) if self._kept is not None else None
        if data is None:
            data = self._client.download_blob(
                offset=self._at,
                length=length,
                etag=self.etag,
                match_condition=MatchConditions.IfNotModified,
            ).readall()
            self.fetched += len(data)
            if self._kept is not None:
                self._kept[(self._at, length)] = data
        buffer[: len(data)] = data
        self._at += len(data)
        return len(data)
