"""The executor interface: how a run's chunks get scored.

A run hands its executor a :class:`ScoringJob` (the chunk blobs, the model-set blobs each needs,
where predictions go). Executors share three calls, so the run lifecycle does not care which one
scores:

* ``submit(job) -> Submission``: start scoring; returns the backend's job id (and a URL where
  there is one). The local executor scores synchronously, so its submission is already final;
  Azure ML returns at once with the job queued.
* ``status(job_id) -> JobStatus``: the backend's view, for the reconciler.
* ``cancel(job_id)``.

Every executor runs the same step, ``python -m scoring.score --chunks DIR --models DIR
--output DIR --chunk ...``, over shards of the run's chunks; predictions land in the predictions
container, where the blob trigger records them.

Training goes the same way (``submit_training(job: TrainingJob)``): the retraining timer writes
training chunks and hands them over; every executor runs ``python -m scoring.train --chunks DIR
--output DIR --models-output DIR --chunk ...`` over shards of them, which writes model sets to
``sets/`` and one summary per chunk to ``training/<job_id>/`` of the models container, where
completion (``shared.training.registration``) registers them. ``status`` and ``cancel`` serve
both kinds of job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

QUEUED, RUNNING, COMPLETED, FAILED, CANCELED = (
    "queued",
    "running",
    "completed",
    "failed",
    "canceled",
)
JOB_TERMINAL = (COMPLETED, FAILED, CANCELED)


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a run: its id, its blob in the chunks container, the model sets it needs."""

    chunk_id: str
    blob: str
    model_files: tuple[str, ...]
    n_sensors: int = 0


@dataclass(frozen=True)
class ScoringJob:
    run_id: str
    window_label: str
    chunks: tuple[ChunkRef, ...]
    chunks_container: str
    models_container: str
    predictions_container: str

    @property
    def predictions_prefix(self) -> str:
        return f"runs/{self.run_id}/"


@dataclass(frozen=True)
class TrainingJob:
    """A training job: its chunks (blobs under ``training/<job_id>/`` of the chunks container)
    and where model sets (``sets/``) and summaries (``training/<job_id>/``) go."""

    job_id: str
    window_label: str
    chunks: tuple[ChunkRef, ...]
    chunks_container: str
    models_container: str

    @property
    def summaries_prefix(self) -> str:
        return f"training/{self.job_id}/"


@dataclass(frozen=True)
class Submission:
    job_id: str
    state: str
    url: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class JobStatus:
    state: str
    message: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in JOB_TERMINAL


class Executor(Protocol):
    name: str

    def submit(self, job: ScoringJob) -> Submission: ...

    def submit_training(self, job: TrainingJob) -> Submission: ...

    def status(self, job_id: str) -> JobStatus: ...

    def cancel(self, job_id: str) -> None: ...


def shard_chunks(chunks: Sequence[ChunkRef], n_shards: int) -> list[list[ChunkRef]]:
    """Split chunks into at most ``n_shards`` contiguous shards of near-equal sensor counts.

    Contiguous, because neighbouring chunks (sorted by device and sensor) usually share model
    sets, so a shard downloads fewer model files.
    """
    if not chunks:
        return []
    n_shards = max(1, min(n_shards, len(chunks)))
    total = sum(max(c.n_sensors, 1) for c in chunks)
    shards: list[list[ChunkRef]] = [[] for _ in range(n_shards)]
    seen = 0
    for chunk in chunks:
        index = min(n_shards - 1, seen * n_shards // total)
        shards[index].append(chunk)
        seen += max(chunk.n_sensors, 1)
    return [s for s in shards if s]


def model_files_of(chunks: Sequence[ChunkRef]) -> list[str]:
    return sorted({f for c in chunks for f in c.model_files})


@dataclass
class StepCommand:
    """The scoring step's command line for one shard (the same locally and on Azure ML)."""

    chunks_dir: str
    models_dir: str
    output_dir: str
    chunk_files: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        args = [
            "python",
            "-m",
            "scoring.score",
            "--chunks",
            self.chunks_dir,
            "--models",
            self.models_dir,
            "--output",
            self.output_dir,
        ]
        for name in self.chunk_files:
            args += ["--chunk", name]
        return args


@dataclass
class TrainingStepCommand:
    """The training step's command line for one shard (the same locally and on Azure ML)."""

    chunks_dir: str
    output_dir: str
    models_output_dir: str
    chunk_files: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        args = [
            "python",
            "-m",
            "scoring.train",
            "--chunks",
            self.chunks_dir,
            "--output",
            self.output_dir,
            "--models-output",
            self.models_output_dir,
        ]
        for name in self.chunk_files:
            args += ["--chunk", name]
        return args
