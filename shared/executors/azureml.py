"""The ``azureml`` executor: one Azure ML pipeline job per run (``EXECUTOR=azureml``), and one
per training job (``submit_training``: the same shape with ``python -m scoring.train`` steps).

``submit`` stages the ``scoring`` package as the job's code, builds the run's pipeline job
(parallel ``command`` steps over shards of the chunks, the same ``python -m scoring.score``
command line as the local executor; see :mod:`shared.azureml.jobs` for the shape and why it is not
an Azure ML ``parallel`` job) and submits it with ``ml_client.jobs.create_or_update``. It returns
at once with the job queued; the steps write predictions straight into the predictions container
through an ``rw_mount`` output, where the blob trigger records them as they come. ``status`` is
asked by the reconciler, and ``cancel`` by operators.

The workspace client is ``MLClient`` with ``DefaultAzureCredential`` (the Function App's managed
identity in Azure, selected by ``AZURE_CLIENT_ID`` for a user-assigned one; ``az login`` here).
It is created on first use and shared per workspace within the process, so a reconciler tick
over many open runs authenticates once. ``azure.ai.ml`` is imported only inside this module's
methods and :mod:`shared.azureml`: ``function_app`` does not pay its second of import time.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from shared.azureml.client import compute_client_id
from shared.azureml.client import ml_client as make_ml_client
from shared.executors.base import (
    CANCELED,
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    JobStatus,
    ScoringJob,
    Submission,
    TrainingJob,
)
from shared.settings import Settings

if TYPE_CHECKING:  # pragma: no cover - typing only
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import PipelineJob

log = logging.getLogger(__name__)

AZUREML_STATES: dict[str, str] = {
    # Before any step runs: the pipeline is accepted, nodes are provisioned, images prepared.
    "NotStarted": QUEUED,
    "Queued": QUEUED,
    "Preparing": QUEUED,
    "Starting": QUEUED,
    "Provisioning": QUEUED,
    # Paused needs an operator (resume or cancel); not terminal, so the run's stall timeout
    # decides rather than this mapping.
    "Paused": QUEUED,
    "Running": RUNNING,
    "Finalizing": RUNNING,
    # Steps may still be writing predictions until the cancellation lands.
    "CancelRequested": RUNNING,
    "Completed": COMPLETED,
    "Failed": FAILED,
    "Canceled": CANCELED,
    # Azure ML gives up on a job whose heartbeats stopped: as final as a failure.
    "NotResponding": FAILED,
}
"""Azure ML job status -> executor state. Unknown values map to ``running`` (not terminal)."""

MAX_MESSAGE = 2000
MAX_FAILED_STEPS = 5
_GENERIC_PIPELINE_ERROR = "see child run or execution logs"
_clients: dict[tuple[str, str, str], Any] = {}
_clients_lock = threading.Lock()


def map_status(azureml_status: str | None) -> str:
    """The executor state of an Azure ML job status (see :data:`AZUREML_STATES`)."""
    return AZUREML_STATES.get(str(azureml_status or "Unknown"), RUNNING)


class AzureMLExecutor:
    """Submits, watches and cancels a run's Azure ML pipeline job; see the module docstring."""

    name = "azureml"

    def __init__(
        self,
        settings: Settings,
        ml_client: MLClient | Any | None = None,
        *,
        client_id: str | None = None,
    ):
        self.settings = settings
        self.client_id = client_id
        self._ml_client = ml_client

    @classmethod
    def from_settings(cls, settings: Settings) -> AzureMLExecutor:
        """The executor for the workspace of ``settings``; ``AZURE_CLIENT_ID`` picks the
        identity the jobs run as."""
        settings.azureml.require_workspace()
        return cls(settings, client_id=compute_client_id(settings))

    @property
    def ml_client(self) -> MLClient | Any:
        if self._ml_client is None:
            aml = self.settings.azureml
            key = (aml.subscription_id, aml.resource_group, aml.workspace)
            with _clients_lock:
                if key not in _clients:
                    _clients[key] = make_ml_client(self.settings)
                self._ml_client = _clients[key]
        return self._ml_client

    # ------------------------------------------------------------------ submit

    def build(self, job: ScoringJob, code_dir, job_name: str | None = None) -> PipelineJob:
        """The pipeline job :meth:`submit` would send (``code_dir`` holds ``scoring/``)."""
        from shared.azureml.jobs import build_pipeline_job

        return build_pipeline_job(
            job, self.settings, code_dir=code_dir, client_id=self.client_id, job_name=job_name
        )

    def submit(self, job: ScoringJob) -> Submission:
        """Submit the run's pipeline job; returns its name, mapped state and studio URL.

        The job name is chosen before the call, so when the call fails after Azure ML accepted
        the job (a timeout on the response), the job is found by name instead of being reported
        failed while it runs.
        """
        from shared.azureml.code import staged_code
        from shared.azureml.jobs import new_job_name

        if not job.chunks:
            return Submission(
                f"azureml:{job.run_id}:empty", COMPLETED, message="no chunks to score"
            )
        name = new_job_name(job.run_id)
        extra = {"run_id": job.run_id, "job_id": name, "chunks": len(job.chunks)}
        try:
            with staged_code() as code_dir:
                pipeline_job = self.build(job, code_dir, job_name=name)
                created = self.ml_client.jobs.create_or_update(
                    pipeline_job, experiment_name=self.settings.azureml.experiment
                )
        except Exception as exc:  # noqa: BLE001 - the run records the failure with its reason
            found = self._find(name)
            if found is None:
                log.exception("azureml submission failed", extra=extra)
                return Submission(name, FAILED, message=f"{type(exc).__name__}: {exc}")
            log.warning("azureml submission raised but the job exists", extra=extra)
            created = found
        raw = getattr(created, "status", None)
        # A just-created job without a (known) status has not started yet.
        state = map_status(raw) if raw in AZUREML_STATES else QUEUED
        url = getattr(created, "studio_url", None)
        log.info("azureml job submitted", extra={**extra, "state": state, "url": url})
        return Submission(getattr(created, "name", None) or name, state, url=url)

    def submit_training(self, job: TrainingJob) -> Submission:
        """Submit a training job's pipeline (parallel ``python -m scoring.train`` steps on the
        cluster, :func:`shared.azureml.jobs.build_training_pipeline_job`); returns at once with
        the job queued, like :meth:`submit`. Its summaries land in ``training/<job_id>/`` of the
        models container, where completion (``shared.training``) registers them."""
        from shared.azureml.code import staged_code
        from shared.azureml.jobs import build_training_pipeline_job, new_job_name

        if not job.chunks:
            return Submission(
                f"azureml:{job.job_id}:empty", COMPLETED, message="no chunks to train"
            )
        name = new_job_name(job.job_id)
        extra = {"training_job_id": job.job_id, "job_id": name, "chunks": len(job.chunks)}
        try:
            with staged_code() as code_dir:
                pipeline_job = build_training_pipeline_job(
                    job, self.settings, code_dir=code_dir, client_id=self.client_id, job_name=name
                )
                created = self.ml_client.jobs.create_or_update(
                    pipeline_job, experiment_name=self.settings.azureml.experiment
                )
        except Exception as exc:  # noqa: BLE001 - the job records the failure with its reason
            found = self._find(name)
            if found is None:
                log.exception("azureml training submission failed", extra=extra)
                return Submission(name, FAILED, message=f"{type(exc).__name__}: {exc}")
            log.warning("azureml training submission raised but the job exists", extra=extra)
            created = found
        raw = getattr(created, "status", None)
        state = map_status(raw) if raw in AZUREML_STATES else QUEUED
        url = getattr(created, "studio_url", None)
        log.info("azureml training job submitted", extra={**extra, "state": state, "url": url})
        return Submission(getattr(created, "name", None) or name, state, url=url)

    def _find(self, name: str) -> Any | None:
        try:
            return self.ml_client.jobs.get(name)
        except Exception:  # noqa: BLE001 - not found, or Azure ML unreachable: not submitted
            return None

    # ------------------------------------------------------------------ status, cancel

    def status(self, job_id: str) -> JobStatus:
        """The job's state from ``ml_client.jobs.get``, with Azure ML's error for failures.

        A job Azure ML does not know is ``failed``; other errors (network, auth) propagate, so
        the reconciler retries on its next tick instead of failing a run that may be fine.
        """
        from azure.core.exceptions import ResourceNotFoundError

        if job_id.endswith(":empty") and job_id.startswith("azureml:"):
            return JobStatus(COMPLETED, "no chunks to score")
        try:
            azure_job = self.ml_client.jobs.get(job_id)
        except ResourceNotFoundError:
            return JobStatus(FAILED, f"Azure ML job {job_id} not found")
        raw = getattr(azure_job, "status", None)
        state = map_status(raw)
        message = None
        if state in (FAILED, CANCELED):
            message = self._failure_message(job_id, raw, getattr(azure_job, "studio_url", None))
        elif raw not in AZUREML_STATES:
            message = f"Azure ML status {raw!r}"
        elif raw in ("Paused", "CancelRequested"):
            message = f"Azure ML status {raw}"
        return JobStatus(state, message)

    def cancel(self, job_id: str) -> None:
        """Ask Azure ML to cancel the job (asynchronous: ``status`` reports ``canceled`` once it
        lands). A job Azure ML does not know is nothing to cancel."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.ml_client.jobs.begin_cancel(job_id)
        except ResourceNotFoundError:
            log.warning("azureml job to cancel not found", extra={"job_id": job_id})

    # ------------------------------------------------------------------ error messages

    def _failure_message(self, job_id: str, raw_status: str | None, url: str | None) -> str:
        """Azure ML's own words for a failed or canceled job.

        The job entity of ``jobs.get`` carries no error; Azure ML keeps it in run history (the
        source of ``az ml job stream``'s "Error:" block). A pipeline's error there is usually the
        generic "some steps failed", so the failed steps' errors are added, by display name.
        Every lookup is best effort: the message must never be what fails.
        """
        parts = [f"Azure ML job {job_id} {raw_status}"]
        top = self._run_error(job_id)
        if top:
            parts.append(top)
        if raw_status != "Canceled" and (not top or _GENERIC_PIPELINE_ERROR in top.lower()):
            parts.extend(self._failed_steps(job_id))
        if url:
            parts.append(f"studio: {url}")
        message = "; ".join(parts)
        return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."

    def _run_error(self, run_name: str) -> str | None:
        try:
            details = self.ml_client.jobs._runs_operations.get_run_details(run_name)
            root = getattr(getattr(details, "error", None), "error", None)
        except Exception:  # noqa: BLE001 - best effort, see _failure_message
            log.debug("no run details for %s", run_name, exc_info=True)
            return None
        if root is None:
            return None
        code, text = getattr(root, "code", None), getattr(root, "message", None)
        if not text:
            return code
        return f"{code}: {text}" if code else text

    def _failed_steps(self, job_id: str) -> list[str]:
        try:
            children = list(self.ml_client.jobs.list(parent_job_name=job_id))
        except Exception:  # noqa: BLE001 - best effort, see _failure_message
            log.debug("no child jobs for %s", job_id, exc_info=True)
            return []
        failed = [c for c in children if map_status(getattr(c, "status", None)) == FAILED]
        lines = []
        for child in failed[:MAX_FAILED_STEPS]:
            label = getattr(child, "display_name", None) or getattr(child, "name", "?")
            lines.append(f"step {label}: {self._run_error(child.name) or child.status}")
        if len(failed) > MAX_FAILED_STEPS:
            lines.append(f"and {len(failed) - MAX_FAILED_STEPS} more failed step(s)")
        return lines
