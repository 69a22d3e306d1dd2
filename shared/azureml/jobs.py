"""The Azure ML pipeline job of one run: parallel ``command`` steps, one per shard of chunks.
(A training job's pipeline has the same shape with ``python -m scoring.train``; see
:class:`TrainingPipelinePlan` at the end.)

Shape of the job (built with ``azure.ai.ml.dsl.pipeline``)::

    pipeline job  <run_id>-<8 hex>           experiment AZUREML_EXPERIMENT, tags run_id, window
      score_<run>_01   python -m scoring.score --chunks ${{inputs.chunks}}
      score_<run>_02       --models ${{inputs.models}} --output ${{outputs.predictions}}
      ...                  --chunk <chunk_id>.parquet ...          (this shard's chunks)

    inputs   chunks       uri_folder  azureml://datastores/<chunks>/paths/runs/<run_id>/  ro_mount
             models       uri_folder  azureml://datastores/<models>/paths/sets/           ro_mount
    output   predictions  uri_folder  azureml://datastores/<predictions>/paths/runs/<run_id>/
                                                                                          rw_mount

Steps: ``min(AZUREML_MAX_STEPS, AZUREML_MAX_NODES, chunks)``, cut by
:func:`shared.executors.base.shard_chunks` exactly as the local executor cuts its shards, so both
executors score the same groups of chunks with the same command line (built by
:class:`~shared.executors.base.StepCommand`; only the folders differ: mount points here, temporary
folders there). More steps than nodes would only queue.

Why command steps and not an Azure ML ``parallel`` job
------------------------------------------------------
A ``parallel_run_function`` job brings mini-batches, per-mini-batch retries and an error
threshold, but it requires an entry script with the ``init()``/``run(mini_batch)`` contract. Here
that would be a second code path beside ``python -m scoring.score``, the one the local executor
and the tests run, and it buys little:

* failure isolation is already finer than a mini-batch: the step fails one *sensor* (missing or
  broken model, bad features) and records why in ``<chunk>.errors.parquet``; an unreadable chunk
  gets an errors file too, and the run records both;
* the step is vectorised over whole chunks (thousands of sensors per model-set evaluation);
  splitting by file into mini-batches adds per-batch overhead and changes nothing else;
* a retry would rewrite the same deterministic file names, which the run lifecycle already gets
  by re-running the run.

What the pipeline sets instead: ``continue_on_step_failure`` (one failed shard does not cancel
the others: their predictions still land), ``force_rerun`` and non-deterministic components (Azure
ML must never "reuse" a previous step's output for the same datastore paths, since the chunks
there are rewritten per run), and each step's timeout from ``RUN_TIMEOUT_MINUTES`` (a hung node
stops costing).

Output mode
-----------
``rw_mount`` (a Blobfuse2 mount of the predictions folder) uploads each file to blob storage when
the step closes it, so predictions appear chunk by chunk while the step runs and the Event Grid
``BlobCreated`` subscription fires the blob trigger per predictions file. The step writes every
file under a temporary name and renames it (on a blob mount: copy, then delete), and writes
``<chunk>.errors.parquet`` before ``<chunk>.predictions.parquet``, so the errors file is in storage
when the trigger that reads it fires. Temporary names (``.<name>.<pid>.tmp``) do not match the
subscription's ``.predictions.parquet`` suffix filter. ``upload`` mode would copy the folder only
after the step ends, in no particular order.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from shared.blobs import model_set_blob, run_prefix, training_prefix
from shared.executors.base import (
    ChunkRef,
    ScoringJob,
    StepCommand,
    TrainingJob,
    TrainingStepCommand,
    shard_chunks,
)
from shared.settings import Settings

if TYPE_CHECKING:  # pragma: no cover - typing only
    from azure.ai.ml.entities import PipelineJob

CHUNKS_INPUT, MODELS_INPUT, PREDICTIONS_OUTPUT = "chunks", "models", "predictions"
CHUNKS_PLACEHOLDER = "${{inputs." + CHUNKS_INPUT + "}}"
MODELS_PLACEHOLDER = "${{inputs." + MODELS_INPUT + "}}"
OUTPUT_PLACEHOLDER = "${{outputs." + PREDICTIONS_OUTPUT + "}}"
INPUT_MODE, OUTPUT_MODE = "ro_mount", "rw_mount"
PIPELINE_COMPONENT_NAME = "sensor_scoring_run"
_PLACEHOLDER = re.compile(r"^\$\{\{(inputs|outputs)\.[A-Za-z_][A-Za-z0-9_]*\}\}$")


def datastore_uri(datastore: str, path: str) -> str:
    """``azureml://datastores/<datastore>/paths/<path>`` (a folder path keeps its slash)."""
    return f"azureml://datastores/{datastore}/paths/{path.lstrip('/')}"


def environment_reference(settings: Settings) -> str:
    """The registered scoring environment, ``azureml:<name>:<version>``."""
    return f"azureml:{settings.azureml.environment}:{settings.azureml.environment_version}"


def command_line(argv: Sequence[str]) -> str:
    """Join argv into the job's command string.

    Azure ML placeholders (``${{inputs.chunks}}``) stay bare so that the service substitutes
    them; every other argument is shell-quoted (chunk file names never need it, but a name must
    not be able to inject shell syntax into the node's command).
    """
    return " ".join(a if _PLACEHOLDER.match(a) else shlex.quote(a) for a in argv)


def node_name(run_id: str, shard: int) -> str:
    """Step name carrying the run id: Azure ML allows only ``[a-z_][a-z0-9_]*`` here."""
    slug = re.sub(r"[^a-z0-9_]", "_", run_id.lower())
    return f"score_{slug}_{shard + 1:02d}"


def new_job_name(run_id: str) -> str:
    """A fresh pipeline job name, ``<run_id>-<8 hex>``.

    Job names are unique in a workspace for ever, while a run may be submitted again (a retry
    of a failed run), hence the suffix; the run id prefix keeps the job findable by run.
    """
    slug = re.sub(r"[^A-Za-z0-9_-]", "-", run_id).strip("-_") or "run"
    return f"{slug[:200]}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class StepPlan:
    """One scoring step: a shard of the run's chunks and its exact command line."""

    name: str
    display_name: str
    chunks: tuple[ChunkRef, ...]
    argv: tuple[str, ...]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> str:
        return command_line(self.argv)

    @property
    def chunk_files(self) -> list[str]:
        return [a for k, a in zip(self.argv, self.argv[1:], strict=False) if k == "--chunk"]


@dataclass(frozen=True)
class PipelinePlan:
    """Everything about a run's pipeline job that does not need ``azure.ai.ml``."""

    run_id: str
    window_label: str
    display_name: str
    experiment: str
    compute: str
    environment: str
    chunks_uri: str
    models_uri: str
    predictions_uri: str
    timeout_seconds: int
    tags: dict[str, str]
    steps: tuple[StepPlan, ...]


def _chunk_file(job: ScoringJob, chunk: ChunkRef) -> str:
    """The chunk's path inside the mounted run folder (its blob name below ``runs/<run_id>/``)."""
    prefix = run_prefix(job.run_id)
    if not chunk.blob.startswith(prefix):
        # The step sees only the run's folder of the chunks datastore.
        raise ValueError(f"chunk {chunk.chunk_id}: blob {chunk.blob!r} is not under {prefix!r}")
    return str(PurePosixPath(chunk.blob[len(prefix) :]))


def plan_pipeline(job: ScoringJob, settings: Settings) -> PipelinePlan:
    """The steps, paths, names and tags of the run's pipeline job (pure: no SDK import).

    Raises ``ValueError`` for a job without chunks (there is nothing to submit).
    """
    aml = settings.azureml
    if not job.chunks:
        raise ValueError(f"run {job.run_id} has no chunks: nothing to submit to Azure ML")
    shards = shard_chunks(job.chunks, min(aml.max_steps, aml.max_nodes, len(job.chunks)))
    tags = {
        "run_id": job.run_id,
        "window": job.window_label,
        "executor": "azureml",
        "chunks": str(len(job.chunks)),
        "steps": str(len(shards)),
    }
    steps = []
    for index, shard in enumerate(shards):
        argv = StepCommand(
            chunks_dir=CHUNKS_PLACEHOLDER,
            models_dir=MODELS_PLACEHOLDER,
            output_dir=OUTPUT_PLACEHOLDER,
            chunk_files=[_chunk_file(job, c) for c in shard],
        ).argv()
        sensors = sum(c.n_sensors for c in shard)
        steps.append(
            StepPlan(
                name=node_name(job.run_id, index),
                display_name=f"{job.run_id} shard {index + 1}/{len(shards)}",
                chunks=tuple(shard),
                argv=tuple(argv),
                tags={
                    "run_id": job.run_id,
                    "window": job.window_label,
                    "shard": f"{index + 1}/{len(shards)}",
                    "chunks": str(len(shard)),
                    "sensors": str(sensors),
                },
            )
        )
    return PipelinePlan(
        run_id=job.run_id,
        window_label=job.window_label,
        display_name=f"{job.run_id} {job.window_label}",
        experiment=aml.experiment,
        compute=aml.compute,
        environment=environment_reference(settings),
        chunks_uri=datastore_uri(aml.chunks_datastore, run_prefix(job.run_id)),
        models_uri=datastore_uri(aml.models_datastore, model_set_blob("")),
        predictions_uri=datastore_uri(aml.predictions_datastore, job.predictions_prefix),
        timeout_seconds=int(settings.run_timeout_minutes * 60),
        tags=tags,
        steps=tuple(steps),
    )


def build_pipeline_job(
    job: ScoringJob,
    settings: Settings,
    *,
    code_dir: str | Path,
    client_id: str | None = None,
    job_name: str | None = None,
) -> PipelineJob:
    """The run's pipeline job, ready for ``ml_client.jobs.create_or_update``.

    Parameters
    ----------
    job : ScoringJob
        The run's chunks (their blobs must lie under ``runs/<run_id>/`` of the chunks container,
        which the chunks datastore points at).
    settings : Settings
        ``settings.azureml`` names the compute, environment, datastores and experiment;
        ``run_timeout_minutes`` bounds each step.
    code_dir : path-like
        A folder containing the ``scoring`` package (:func:`shared.azureml.code.stage_code`);
        it must exist until the job is submitted or dumped.
    client_id : str, optional
        The user-assigned identity's client id (``AZURE_CLIENT_ID``): steps run as that managed
        identity; without it, as the submitting user (see :mod:`shared.azureml.client`).
    job_name : str, optional
        The pipeline job name; default :func:`new_job_name`.
    """
    from azure.ai.ml import Input, Output, command, dsl

    from shared.azureml.client import job_identity

    plan = plan_pipeline(job, settings)
    code = str(Path(code_dir).resolve())
    identity = job_identity(client_id)

    def step_node(step: StepPlan):
        return command(
            name=step.name,
            display_name=step.display_name,
            tags=step.tags,
            command=step.command,
            code=code,
            environment=plan.environment,
            compute=plan.compute,
            inputs={
                CHUNKS_INPUT: Input(type="uri_folder", path=plan.chunks_uri, mode=INPUT_MODE),
                MODELS_INPUT: Input(type="uri_folder", path=plan.models_uri, mode=INPUT_MODE),
            },
            outputs={
                PREDICTIONS_OUTPUT: Output(
                    type="uri_folder", path=plan.predictions_uri, mode=OUTPUT_MODE
                )
            },
            identity=identity,
            timeout=plan.timeout_seconds,
            # Never let Azure ML reuse an earlier step's output: same paths, new chunks.
            is_deterministic=False,
        )

    @dsl.pipeline(
        name=PIPELINE_COMPONENT_NAME,
        display_name=plan.display_name,
        description=f"Scoring run {plan.run_id}, window {plan.window_label}",
        experiment_name=plan.experiment,
        tags=plan.tags,
        default_compute=plan.compute,
        continue_on_step_failure=True,
        force_rerun=True,
    )
    def scoring_pipeline():
        for step in plan.steps:
            node = step_node(step)()
            node.name = step.name
            node.display_name = step.display_name

    pipeline_job = scoring_pipeline()
    pipeline_job.name = job_name or new_job_name(job.run_id)
    return pipeline_job


def dump_pipeline_job(pipeline_job: PipelineJob, dest: str | Path) -> Path:
    """Write the job as YAML (the ``az ml job create --file`` format) and return the path."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    pipeline_job.dump(dest)
    return dest


# --------------------------------------------------------------------------- training jobs

SUMMARIES_OUTPUT, MODEL_SETS_OUTPUT = "summaries", "model_sets"
SUMMARIES_PLACEHOLDER = "${{outputs." + SUMMARIES_OUTPUT + "}}"
MODEL_SETS_PLACEHOLDER = "${{outputs." + MODEL_SETS_OUTPUT + "}}"
TRAINING_COMPONENT_NAME = "sensor_training_job"


def training_node_name(job_id: str, shard: int) -> str:
    slug = re.sub(r"[^a-z0-9_]", "_", job_id.lower())
    return f"fit_{slug}_{shard + 1:02d}"


@dataclass(frozen=True)
class TrainingPipelinePlan:
    """Everything about a training job's pipeline that does not need ``azure.ai.ml``.

    Same shape as a run's: parallel ``command`` steps over shards of the training chunks (cut
    by :func:`shard_chunks`, as the local executor cuts them), each running ``python -m
    scoring.train`` (:class:`~shared.executors.base.TrainingStepCommand`) with the chunks
    folder mounted read-only and two ``rw_mount`` outputs on the models datastore: ``sets/``
    for the model sets and ``training/<job_id>/`` for the summaries that completion registers.
    """

    job_id: str
    window_label: str
    display_name: str
    experiment: str
    compute: str
    environment: str
    chunks_uri: str
    summaries_uri: str
    model_sets_uri: str
    timeout_seconds: int
    tags: dict[str, str]
    steps: tuple[StepPlan, ...]


def plan_training_pipeline(job: TrainingJob, settings: Settings) -> TrainingPipelinePlan:
    """The steps, paths, names and tags of a training job's pipeline (pure: no SDK import)."""
    aml = settings.azureml
    if not job.chunks:
        raise ValueError(f"training job {job.job_id} has no chunks: nothing to submit")
    prefix = training_prefix(job.job_id)
    for chunk in job.chunks:
        if not chunk.blob.startswith(prefix):
            raise ValueError(f"chunk {chunk.chunk_id}: blob {chunk.blob!r} is not under {prefix!r}")
    shards = shard_chunks(job.chunks, min(aml.max_steps, aml.max_nodes, len(job.chunks)))
    tags = {
        "training_job_id": job.job_id,
        "window": job.window_label,
        "executor": "azureml",
        "chunks": str(len(job.chunks)),
        "steps": str(len(shards)),
    }
    steps = []
    for index, shard in enumerate(shards):
        argv = TrainingStepCommand(
            chunks_dir=CHUNKS_PLACEHOLDER,
            output_dir=SUMMARIES_PLACEHOLDER,
            models_output_dir=MODEL_SETS_PLACEHOLDER,
            chunk_files=[str(PurePosixPath(c.blob[len(prefix) :])) for c in shard],
        ).argv()
        steps.append(
            StepPlan(
                name=training_node_name(job.job_id, index),
                display_name=f"{job.job_id} shard {index + 1}/{len(shards)}",
                chunks=tuple(shard),
                argv=tuple(argv),
                tags={
                    "training_job_id": job.job_id,
                    "window": job.window_label,
                    "shard": f"{index + 1}/{len(shards)}",
                    "chunks": str(len(shard)),
                    "sensors": str(sum(c.n_sensors for c in shard)),
                },
            )
        )
    return TrainingPipelinePlan(
        job_id=job.job_id,
        window_label=job.window_label,
        display_name=f"{job.job_id} {job.window_label}",
        experiment=aml.experiment,
        compute=aml.compute,
        environment=environment_reference(settings),
        chunks_uri=datastore_uri(aml.chunks_datastore, prefix),
        summaries_uri=datastore_uri(aml.models_datastore, prefix),
        model_sets_uri=datastore_uri(aml.models_datastore, model_set_blob("")),
        timeout_seconds=int(settings.run_timeout_minutes * 60),
        tags=tags,
        steps=tuple(steps),
    )


def build_training_pipeline_job(
    job: TrainingJob,
    settings: Settings,
    *,
    code_dir: str | Path,
    client_id: str | None = None,
    job_name: str | None = None,
) -> PipelineJob:
    """A training job's pipeline job, ready for ``ml_client.jobs.create_or_update`` (see
    :class:`TrainingPipelinePlan`; parameters as :func:`build_pipeline_job`)."""
    from azure.ai.ml import Input, Output, command, dsl

    from shared.azureml.client import job_identity

    plan = plan_training_pipeline(job, settings)
    code = str(Path(code_dir).resolve())
    identity = job_identity(client_id)

    def step_node(step: StepPlan):
        return command(
            name=step.name,
            display_name=step.display_name,
            tags=step.tags,
            command=step.command,
            code=code,
            environment=plan.environment,
            compute=plan.compute,
            inputs={CHUNKS_INPUT: Input(type="uri_folder", path=plan.chunks_uri, mode=INPUT_MODE)},
            outputs={
                SUMMARIES_OUTPUT: Output(
                    type="uri_folder", path=plan.summaries_uri, mode=OUTPUT_MODE
                ),
                MODEL_SETS_OUTPUT: Output(
                    type="uri_folder", path=plan.model_sets_uri, mode=OUTPUT_MODE
                ),
            },
            identity=identity,
            timeout=plan.timeout_seconds,
            is_deterministic=False,
        )

    @dsl.pipeline(
        name=TRAINING_COMPONENT_NAME,
        display_name=plan.display_name,
        description=f"Training job {plan.job_id}, window {plan.window_label}",
        experiment_name=plan.experiment,
        tags=plan.tags,
        default_compute=plan.compute,
        continue_on_step_failure=True,
        force_rerun=True,
    )
    def training_pipeline():
        for step in plan.steps:
            node = step_node(step)()
            node.name = step.name
            node.display_name = step.display_name

    pipeline_job = training_pipeline()
    pipeline_job.name = job_name or new_job_name(job.job_id)
    return pipeline_job
