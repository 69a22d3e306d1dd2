"""Executors: where a run's scoring happens (``local`` process pool or an Azure ML pipeline job)."""

from __future__ import annotations

from shared.executors.base import (
    ChunkRef,
    Executor,
    JobStatus,
    ScoringJob,
    Submission,
    TrainingJob,
)
from shared.settings import Settings


def make_executor(
    settings: Settings, name: str | None = None, workers: int | None = None
) -> Executor:
    """The executor named by ``EXECUTOR`` (or ``name``). Azure ML's SDK is imported only here,
    when that executor is chosen: it takes over a second to import."""
    name = name or settings.executor
    if name == "local":
        from shared.executors.local import LocalExecutor

        return LocalExecutor(settings.storage, workers or settings.local_workers)
    if name == "azureml":
        from shared.executors.azureml import AzureMLExecutor

        return AzureMLExecutor.from_settings(settings)
    raise ValueError(f"unknown executor {name!r}")


__all__ = [
    "ChunkRef",
    "Executor",
    "JobStatus",
    "ScoringJob",
    "Submission",
    "TrainingJob",
    "make_executor",
]
