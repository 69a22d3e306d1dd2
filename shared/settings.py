"""The app's settings: one typed object read from the environment.

The names are the Function App's app settings and the keys of ``local.settings.example.json``
(the settings consistency test keeps the three in step). Every setting has a local default, so
the app runs on this machine with no configuration at all: SQLite under ``DATA_DIR`` and the
Azurite development storage account.

A missing or malformed value raises :class:`SettingsError` naming the setting and the rule it
breaks. ``function_app`` reads the settings when the Functions host imports it, so the error
fails the worker's indexing and the app starts with no function, its message in the host's log,
rather than in the middle of a run. Reading them imports nothing heavy (croniter only).

Connections follow the Functions host's conventions so that a binding and the SDK client made
here read the *same* settings:

* ``ScoringStorage`` is a connection string, or identity-based with
  ``ScoringStorage__accountName`` / ``ScoringStorage__blobServiceUri`` (+ ``__credential`` and
  ``__clientId`` for a user-assigned managed identity). The run-request queue lives on the same
  account: ``ScoringStorage__queueServiceUri``, else derived from ``__accountName``.
* ``EventHubConnection`` is a connection string, or ``EventHubConnection__fullyQualifiedNamespace``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from croniter import croniter

AZURITE_CONNECTION_STRING = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
)

STORAGE_CONNECTION = "ScoringStorage"
EVENTHUB_CONNECTION = "EventHubConnection"
EXECUTORS = ("local", "azureml")
# How long a connection or a unit of work keeps retrying transient SQL errors (an Azure SQL
# serverless database resuming from auto-pause typically needs under a minute).
DEFAULT_SQL_RETRY_SECONDS = 90.0
# An anomaly event ends after this many buckets without a flag (5 hours of 1-minute buckets):
# one incident, however ragged its flags, is one alarm (see shared.events).
DEFAULT_EVENT_GAP_BUCKETS = 300
# An anomaly event spans at most this many buckets from its onset (its alert): the sensor's rest
# period after an alert, as the best streaming detectors keep one (shared.events).
DEFAULT_EVENT_REST_BUCKETS = 300
# Retraining: daily at 00:30 UTC, after the midnight scoring window (shared.training).
DEFAULT_TRAINING_SCHEDULE = "0 30 0 * * *"


# Upper bounds of durations: past them a setting is a typo, and times computed from it would
# overflow Python's datetime (MAX_WINDOW_HOURS=1e308 made every POST /api/runs a 500).
DAY_SECONDS = 86_400
WEEK_MINUTES = 7 * 24 * 60
YEAR_HOURS = 366 * 24
# Azure's rule for container and queue names.
CONTAINER_RULE = (
    "3-{max} characters: lowercase letters a-z, digits and single hyphens, starting and ending "
    "with a letter or digit"
)
_CONTAINER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Connection:
    """An app-setting connection: either a connection string or identity-based.

    Attributes
    ----------
    name:
        The setting prefix, e.g. ``ScoringStorage``.
    connection_string:
        The plain value of the setting, when given.
    endpoint:
        For identity-based connections: the blob service URI or the Event Hubs namespace.
    queue_endpoint:
        For identity-based storage connections: the queue service URI, when known.
    client_id:
        ``<name>__clientId`` for a user-assigned managed identity, else ``None``.
    """

    name: str
    connection_string: str | None = None
    endpoint: str | None = None
    client_id: str | None = None
    queue_endpoint: str | None = None

    @property
    def identity_based(self) -> bool:
        return self.connection_string is None


@dataclass(frozen=True)
class AzureMLSettings:
    """Where and how the ``azureml`` executor submits pipeline jobs."""

    subscription_id: str = ""
    resource_group: str = ""
    workspace: str = ""
    compute: str = "cpu-cluster"
    vm_size: str = "Standard_D2as_v4"
    min_nodes: int = 0
    max_nodes: int = 4
    idle_seconds: int = 300
    tier: str = "dedicated"
    max_steps: int = 4
    experiment: str = "sensor-scoring"
    environment: str = "sensor-scoring"
    environment_version: str = "1"
    base_image: str = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
    chunks_datastore: str = "chunks"
    models_datastore: str = "models"
    predictions_datastore: str = "predictions"
    # ARM id of the user-assigned identity the compute cluster runs as (a client id alone
    # cannot attach an identity to a cluster).
    identity_resource_id: str = ""

    def require_workspace(self) -> None:
        """Raise unless the workspace coordinates are all set (the executor needs them)."""
        for setting, value in (
            ("AZUREML_SUBSCRIPTION_ID", self.subscription_id),
            ("AZUREML_RESOURCE_GROUP", self.resource_group),
            ("AZUREML_WORKSPACE", self.workspace),
        ):
            if not value:
                raise SettingsError(f"{setting} is required when EXECUTOR=azureml")


@dataclass(frozen=True)
class AlertSettings:
    """Where notifications of anomaly events go (``shared.alerts``).

    ``eventgrid_endpoint``: an Event Grid custom topic's endpoint, published to as CloudEvents
    1.0 with the managed identity (role EventGrid Data Sender). ``webhook_urls``: HTTPS
    endpoints that get the same CloudEvent (or a Teams card) signed with HMAC-SHA256 under
    ``webhook_secret``. ``base_url``: the app's public URL, for the report links in alerts.
    """

    eventgrid_endpoint: str | None = None
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = None
    webhook_format: str = "cloudevents"
    base_url: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.eventgrid_endpoint or self.webhook_urls)


WEBHOOK_FORMATS = ("cloudevents", "teams")


def _https(name: str, value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise SettingsError(f"{name}: {value[:80]!r} is not an https:// URL (HTTPS only)")
    return value


def _alert_settings(r: _Reader) -> AlertSettings:
    endpoint = r.optional("ALERTS_EVENTGRID_ENDPOINT")
    if endpoint is not None:
        _https("ALERTS_EVENTGRID_ENDPOINT", endpoint)
    raw = r.text("ALERTS_WEBHOOK_URLS", "")
    urls = tuple(_https("ALERTS_WEBHOOK_URLS", u.strip()) for u in raw.split(",") if u.strip())
    secret = r.optional("ALERTS_WEBHOOK_SECRET")
    if urls and (secret is None or len(secret) < 16):
        raise SettingsError(
            "ALERTS_WEBHOOK_SECRET is required with ALERTS_WEBHOOK_URLS (at least 16 characters:"
            " webhook bodies are signed with it)"
        )
    base_url = r.text("ALERTS_BASE_URL", "").rstrip("/")
    if base_url:
        _https("ALERTS_BASE_URL", base_url)
    return AlertSettings(
        eventgrid_endpoint=endpoint,
        webhook_urls=urls,
        webhook_secret=secret,
        webhook_format=r.choice("ALERTS_WEBHOOK_FORMAT", "cloudevents", WEBHOOK_FORMATS),
        base_url=base_url,
    )


@dataclass(frozen=True)
class Settings:
    """Everything the app reads from its environment. Build with :meth:`from_env`."""

    data_dir: Path
    sql_url: str
    sql_server: str | None
    sql_database: str | None
    storage: Connection
    eventhub: Connection
    eventhub_name: str
    eventhub_consumer_group: str
    models_container: str
    chunks_container: str
    predictions_container: str
    deadletter_container: str
    reports_container: str
    runs_queue: str
    scoring_schedule: str
    catchup_max_windows: int
    max_window_hours: float
    bucket_seconds: int
    sensors_per_chunk: int
    executor: str
    local_workers: int
    run_timeout_minutes: float
    reconcile_interval_seconds: float
    train_window_hours: float
    # Days of readings (and bucket aggregates) and of predictions/anomaly events kept; older
    # rows are deleted by the scoring timer in bounded batches (shared.retention).
    readings_retention_days: float
    predictions_retention_days: float
    min_training_buckets: int
    target_false_alarm_rate: float
    # Score at or above which a bucket is flagged (scores are graded in [0, 1]; 0.5 is a tail
    # probability of 1e-5 under the sensor's normal behaviour for the default detector).
    sensitivity: float
    log_level: str
    appinsights_connection_string: str | None
    # The user-assigned managed identity's client id (DefaultAzureCredential reads it too).
    azure_client_id: str | None = None
    # Seconds to keep retrying transient SQL errors (shared.db.retry); 0 turns retries off.
    sql_retry_seconds: float = DEFAULT_SQL_RETRY_SECONDS
    # Unflagged buckets that end an anomaly event (shared.events): flags closer than this merge.
    event_gap_buckets: int = DEFAULT_EVENT_GAP_BUCKETS
    # Buckets from an event's onset after which a flag opens a new event (a new alert).
    event_rest_buckets: int = DEFAULT_EVENT_REST_BUCKETS
    azureml: AzureMLSettings = field(default_factory=AzureMLSettings)
    # When models are retrained over the trailing TRAIN_WINDOW_HOURS (shared.training).
    training_schedule: str = DEFAULT_TRAINING_SCHEDULE
    # Where anomaly-event notifications go (shared.alerts); none set: no notification is sent.
    alerts: AlertSettings = field(default_factory=lambda: AlertSettings())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting; raise :class:`SettingsError` naming a bad one."""
        env = os.environ if env is None else env
        r = _Reader(env)
        data_dir = Path(r.text("DATA_DIR", ".data")).expanduser()
        sql_server = r.optional("SQL_SERVER")
        sql_database = r.optional("SQL_DATABASE")
        if sql_server and not sql_database:
            raise SettingsError("SQL_DATABASE is required when SQL_SERVER is set")
        default_url = f"sqlite:///{(data_dir / 'scoring.db').as_posix()}"
        sql_url = r.text("SQL_URL", "" if sql_server else default_url)
        schedule = r.text("SCORING_SCHEDULE", "0 0 * * * *")
        if not _valid_ncrontab(schedule):
            raise SettingsError(
                f"SCORING_SCHEDULE={schedule!r} is not a six-field NCRONTAB expression "
                "(second minute hour day month day-of-week)"
            )
        training_schedule = r.text("TRAINING_SCHEDULE", DEFAULT_TRAINING_SCHEDULE)
        if not _valid_ncrontab(training_schedule):
            raise SettingsError(
                f"TRAINING_SCHEDULE={training_schedule!r} is not a six-field NCRONTAB expression "
                "(second minute hour day month day-of-week)"
            )
        executor = r.choice("EXECUTOR", "local", EXECUTORS)
        azureml = AzureMLSettings(
            subscription_id=r.text("AZUREML_SUBSCRIPTION_ID", ""),
            resource_group=r.text("AZUREML_RESOURCE_GROUP", ""),
            workspace=r.text("AZUREML_WORKSPACE", ""),
            compute=r.text("AZUREML_COMPUTE", AzureMLSettings.compute),
            vm_size=r.text("AZUREML_VM_SIZE", AzureMLSettings.vm_size),
            min_nodes=r.integer("AZUREML_MIN_NODES", 0, minimum=0, maximum=1000),
            max_nodes=r.integer("AZUREML_MAX_NODES", 4, minimum=1, maximum=1000),
            idle_seconds=r.integer("AZUREML_IDLE_SECONDS", 300, minimum=0, maximum=DAY_SECONDS),
            tier=r.choice("AZUREML_TIER", "dedicated", ("dedicated", "low_priority")),
            max_steps=r.integer("AZUREML_MAX_STEPS", 4, minimum=1, maximum=1000),
            experiment=r.text("AZUREML_EXPERIMENT", AzureMLSettings.experiment),
            environment=r.text("AZUREML_ENVIRONMENT", AzureMLSettings.environment),
            environment_version=r.text("AZUREML_ENVIRONMENT_VERSION", "1"),
            base_image=r.text("AZUREML_BASE_IMAGE", AzureMLSettings.base_image),
            chunks_datastore=r.text("AZUREML_CHUNKS_DATASTORE", "chunks"),
            models_datastore=r.text("AZUREML_MODELS_DATASTORE", "models"),
            predictions_datastore=r.text("AZUREML_PREDICTIONS_DATASTORE", "predictions"),
            identity_resource_id=r.text("AZUREML_IDENTITY_RESOURCE_ID", ""),
        )
        if azureml.min_nodes > azureml.max_nodes:
            raise SettingsError("AZUREML_MIN_NODES must not exceed AZUREML_MAX_NODES")
        if executor == "azureml":
            azureml.require_workspace()
        settings = cls(
            data_dir=data_dir,
            sql_url=sql_url,
            sql_server=sql_server,
            sql_database=sql_database,
            storage=r.connection(STORAGE_CONNECTION, AZURITE_CONNECTION_STRING, "blobServiceUri"),
            eventhub=r.connection(EVENTHUB_CONNECTION, None, "fullyQualifiedNamespace"),
            eventhub_name=r.text("EVENTHUB_NAME", "readings"),
            eventhub_consumer_group=r.text("EVENTHUB_CONSUMER_GROUP", "$Default"),
            models_container=r.container("MODELS_CONTAINER", "models"),
            chunks_container=r.container("CHUNKS_CONTAINER", "chunks"),
            predictions_container=r.container("PREDICTIONS_CONTAINER", "predictions"),
            deadletter_container=r.container("DEADLETTER_CONTAINER", "deadletters"),
            reports_container=r.container("REPORTS_CONTAINER", "reports"),
            # Queue names follow the container naming rules; the host adds "-poison" for the
            # poison queue, so leave room for it.
            runs_queue=r.container("RUNS_QUEUE", "run-requests", max_length=56),
            scoring_schedule=schedule,
            catchup_max_windows=r.integer("CATCHUP_MAX_WINDOWS", 3, minimum=1, maximum=1000),
            max_window_hours=r.number("MAX_WINDOW_HOURS", 24.0, minimum=0.001, maximum=YEAR_HOURS),
            bucket_seconds=r.integer("BUCKET_SECONDS", 60, minimum=1, maximum=DAY_SECONDS),
            sensors_per_chunk=r.integer("SENSORS_PER_CHUNK", 1000, minimum=1, maximum=1_000_000),
            executor=executor,
            local_workers=r.integer("LOCAL_WORKERS", os.cpu_count() or 1, minimum=1, maximum=1024),
            run_timeout_minutes=r.number(
                "RUN_TIMEOUT_MINUTES", 120.0, minimum=1.0, maximum=WEEK_MINUTES
            ),
            reconcile_interval_seconds=r.number(
                "RECONCILE_INTERVAL_SECONDS", 60.0, minimum=0.0, maximum=DAY_SECONDS
            ),
            train_window_hours=r.number(
                "TRAIN_WINDOW_HOURS", 336.0, minimum=0.01, maximum=YEAR_HOURS
            ),
            readings_retention_days=r.number(
                "READINGS_RETENTION_DAYS", 30.0, minimum=1.0, maximum=3660.0
            ),
            predictions_retention_days=r.number(
                "PREDICTIONS_RETENTION_DAYS", 90.0, minimum=1.0, maximum=3660.0
            ),
            training_schedule=training_schedule,
            min_training_buckets=r.integer(
                "MIN_TRAINING_BUCKETS", 30, minimum=2, maximum=10_000_000
            ),
            target_false_alarm_rate=r.number(
                "TARGET_FALSE_ALARM_RATE", 0.001, minimum=0.0, maximum=0.5
            ),
            sensitivity=r.number("SENSITIVITY", 0.5, minimum=0.01, maximum=1.0),
            log_level=r.choice(
                "LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"), upper=True
            ),
            appinsights_connection_string=r.optional("APPLICATIONINSIGHTS_CONNECTION_STRING"),
            azure_client_id=r.optional("AZURE_CLIENT_ID"),
            event_gap_buckets=r.integer(
                "EVENT_GAP_BUCKETS", DEFAULT_EVENT_GAP_BUCKETS, minimum=1, maximum=1_000_000
            ),
            event_rest_buckets=r.integer(
                "EVENT_REST_BUCKETS", DEFAULT_EVENT_REST_BUCKETS, minimum=1, maximum=1_000_000
            ),
            sql_retry_seconds=r.number(
                "SQL_RETRY_SECONDS", DEFAULT_SQL_RETRY_SECONDS, minimum=0.0, maximum=600.0
            ),
            azureml=azureml,
            alerts=_alert_settings(r),
        )
        if settings.readings_retention_days * 24 < settings.train_window_hours + 24:
            raise SettingsError(
                f"READINGS_RETENTION_DAYS={settings.readings_retention_days:g} must keep "
                f"TRAIN_WINDOW_HOURS={settings.train_window_hours:g} plus a day of readings "
                "(retraining reads that trailing window)"
            )
        return settings

    @property
    def containers(self) -> tuple[str, ...]:
        """Every blob container the app writes to (created on first use)."""
        return (
            self.models_container,
            self.chunks_container,
            self.predictions_container,
            self.deadletter_container,
            self.reports_container,
        )

    @property
    def uses_azurite(self) -> bool:
        """True when storage is the local emulator (the demo starts Azurite for it)."""
        cs = self.storage.connection_string or ""
        return "devstoreaccount1" in cs or cs.strip().lower() == "usedevelopmentstorage=true"


def _valid_ncrontab(expr: str) -> bool:
    fields = expr.split()
    # croniter reads a sixth field as seconds only when told to; NCRONTAB puts seconds first.
    if len(fields) != 6:
        return False
    return croniter.is_valid(" ".join(fields[1:] + fields[:1]), second_at_beginning=False)


class _Reader:
    """Reads typed values from an environment mapping; errors name the setting."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def optional(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or not value.strip():
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        value = self.optional(name)
        return default if value is None else value

    def choice(self, name: str, default: str, allowed: tuple[str, ...], upper=False) -> str:
        value = self.text(name, default)
        value = value.upper() if upper else value.lower()
        if value not in allowed:
            raise SettingsError(f"{name}={value!r} must be one of {', '.join(allowed)}")
        return value

    def integer(
        self, name: str, default: int, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        raw = self.optional(name)
        if raw is None:
            return default
        if not (raw.isascii() and raw.lstrip("+-").isdigit()) or len(raw) > 30:
            raise SettingsError(f"{name}={raw[:40]!r} is not an integer (at most 30 ASCII digits)")
        value = int(raw)
        if minimum is not None and value < minimum:
            raise SettingsError(f"{name}={value} must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise SettingsError(f"{name}={value} must be at most {maximum}")
        return value

    def number(
        self, name: str, default: float, minimum: float | None = None, maximum: float | None = None
    ) -> float:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw[:40]!r} is not a number") from None
        if not math.isfinite(value):
            raise SettingsError(f"{name}={raw!r} is not a finite number")
        if minimum is not None and value < minimum:
            raise SettingsError(f"{name}={value} must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise SettingsError(f"{name}={value} must be at most {maximum}")
        return value

    def container(self, name: str, default: str, max_length: int = 63) -> str:
        value = self.text(name, default)
        # Azure's container (and queue) naming rules: 3-63 chars, lowercase letters, digits,
        # single hyphens.
        # ASCII only: str.islower() holds for "è", which Azure refuses (MODELS_CONTAINER=modèls
        # passed here and then failed every call).
        ok = (
            3 <= len(value) <= max_length
            and set(value) <= _CONTAINER_CHARS
            and value[0] != "-"
            and value[-1] != "-"
            and "--" not in value
        )
        if not ok:
            raise SettingsError(
                f"{name}={value!r} is not a valid container or queue name: "
                + CONTAINER_RULE.format(max=max_length)
            )
        return value

    def connection(self, name: str, default: str | None, endpoint_key: str) -> Connection:
        conn_str = self.optional(name)
        client_id = self.optional(f"{name}__clientId")
        credential = self.optional(f"{name}__credential")
        if credential is not None and credential.lower() != "managedidentity":
            raise SettingsError(f"{name}__credential={credential!r} must be 'managedidentity'")
        if conn_str is not None:
            return Connection(name, connection_string=conn_str, client_id=client_id)
        endpoint = self.optional(f"{name}__{endpoint_key}")
        queue_endpoint = None
        if endpoint_key == "blobServiceUri":
            # The Functions host's storage extensions read the same names (queue trigger:
            # __queueServiceUri, or __accountName for both services).
            account = self.optional(f"{name}__accountName")
            queue_endpoint = self.optional(f"{name}__queueServiceUri")
            if endpoint is None and account is not None:
                endpoint = f"https://{account}.blob.core.windows.net"
            if queue_endpoint is None and account is not None:
                queue_endpoint = f"https://{account}.queue.core.windows.net"
        if endpoint is not None or queue_endpoint is not None:
            return Connection(
                name, endpoint=endpoint, client_id=client_id, queue_endpoint=queue_endpoint
            )
        return Connection(name, connection_string=default, client_id=client_id)
