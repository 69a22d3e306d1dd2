"""The ``local`` executor: the scoring and training steps in a process pool on this machine
(the default).

Each shard of chunks goes to a worker process, which downloads its chunk blobs and the model
sets they name into a temporary folder, runs ``scoring.score.score_chunks`` (the very function
behind ``python -m scoring.score``), and uploads each chunk's errors file and then its
predictions file to the predictions container, where the blob trigger records them.

Training (``submit_training``) is the same with ``scoring.train.train_chunks``: model sets
are uploaded to ``sets/`` of the models container, then each chunk's summary to
``training/<job_id>/``.

Scoring is synchronous: ``submit`` returns when every shard is done, with the job already in a
final state. Workers come from a fork server (``scoring.score.worker_context``), never from a
fork of this process: the parent holds SQL connections and Arrow thread pools that must not be
duplicated into children.

No process outlives the run: when a worker dies (or a shard fails) the others are terminated
at once rather than waited for (``scoring.score.terminate_pool``), the job is ``failed`` and the
run fails the chunks that got no predictions file; and workers are bound to the process that
uses them (``scoring.score.bind_worker_lifetime``), so killing the CLI or the host takes the
fork server and its workers with it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from scoring.score import bind_worker_lifetime, terminate_pool, worker_context
from shared.blobs import (
    ERRORS_SUFFIX,
    PREDICTIONS_SUFFIX,
    TRAINING_SUMMARY_SUFFIX,
    BlobStore,
    model_set_blob,
    service_client,
)
from shared.executors.base import (
    COMPLETED,
    FAILED,
    ChunkRef,
    JobStatus,
    ScoringJob,
    Submission,
    TrainingJob,
    model_files_of,
    shard_chunks,
)
from shared.settings import Connection

log = logging.getLogger(__name__)


@dataclass
class ShardResult:
    shard: int
    chunks: int
    sensors_scored: int
    sensors_failed: int
    rows: int
    failed_chunks: list[str]
    seconds: dict[str, float]


def score_shard(
    connection: Connection, job: ScoringJob, shard: int, chunks: list[ChunkRef]
) -> ShardResult:
    """Download, score and upload one shard (runs in a worker process)."""
    from scoring.score import score_chunks

    store = BlobStore(service_client(connection))
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=f"{job.run_id}-s{shard}-") as tmp:
        root = Path(tmp)
        chunks_dir, models_dir, output_dir = root / "chunks", root / "models", root / "output"
        started = time.perf_counter()
        for chunk in chunks:
            store.download_to(
                job.chunks_container, chunk.blob, chunks_dir / f"{chunk.chunk_id}.parquet"
            )
        for name in model_files_of(chunks):
            blob = model_set_blob(name)
            if store.exists(job.models_container, blob):
                store.download_to(job.models_container, blob, models_dir / name)
            # A missing model set is not fatal here: its sensors fail, one by one, in scoring.
        models_dir.mkdir(parents=True, exist_ok=True)
        timings["download"] = time.perf_counter() - started

        started = time.perf_counter()
        summary = score_chunks(
            chunks_dir,
            models_dir,
            output_dir,
            chunk_files=[f"{c.chunk_id}.parquet" for c in chunks],
        )
        timings["score"] = time.perf_counter() - started

        started = time.perf_counter()
        for chunk in chunks:
            # Errors first: the blob trigger fires on the predictions file and reads both.
            for suffix in (ERRORS_SUFFIX, PREDICTIONS_SUFFIX):
                path = output_dir / f"{chunk.chunk_id}{suffix}"
                if path.exists():
                    store.upload_file(
                        job.predictions_container, f"{job.predictions_prefix}{path.name}", path
                    )
        timings["upload"] = time.perf_counter() - started
    return ShardResult(
        shard,
        summary.chunks,
        summary.sensors_scored,
        summary.sensors_failed,
        summary.rows_written,
        list(summary.failed_chunks),
        timings,
    )


@dataclass
class TrainingShardResult:
    shard: int
    chunks: int
    sensors_fitted: int
    sensors_failed: int
    failed_chunks: list[str]
    seconds: dict[str, float]


def train_shard(
    connection: Connection, job: TrainingJob, shard: int, chunks: list[ChunkRef]
) -> TrainingShardResult:
    """Download, train and upload one shard of a training job (runs in a worker process):
    ``scoring.train.train_chunks``, the function behind ``python -m scoring.train``; model
    sets go to ``sets/`` of the models container, then each chunk's summary to
    ``training/<job_id>/``, where completion registers it."""
    from scoring.train import train_chunks

    store = BlobStore(service_client(connection))
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=f"{job.job_id}-s{shard}-") as tmp:
        root = Path(tmp)
        chunks_dir, output_dir, sets_dir = root / "chunks", root / "output", root / "sets"
        started = time.perf_counter()
        for chunk in chunks:
            store.download_to(
                job.chunks_container, chunk.blob, chunks_dir / f"{chunk.chunk_id}.parquet"
            )
        timings["download"] = time.perf_counter() - started
        started = time.perf_counter()
        summary = train_chunks(
            chunks_dir,
            output_dir,
            sets_dir,
            chunk_files=[f"{c.chunk_id}.parquet" for c in chunks],
        )
        timings["train"] = time.perf_counter() - started
        started = time.perf_counter()
        # Model sets first: a summary names its model set, which must be there when it is read.
        for path in sorted(sets_dir.iterdir()):
            if not path.name.startswith("."):
                store.upload_file(job.models_container, model_set_blob(path.name), path)
        for chunk in chunks:
            path = output_dir / f"{chunk.chunk_id}{TRAINING_SUMMARY_SUFFIX}"
            if path.exists():
                store.upload_file(job.models_container, f"{job.summaries_prefix}{path.name}", path)
        timings["upload"] = time.perf_counter() - started
    return TrainingShardResult(
        shard,
        summary.chunks,
        summary.sensors_fitted,
        summary.sensors_failed,
        list(summary.failed_chunks),
        timings,
    )


class LocalExecutor:
    """Scores a job's shards in ``workers`` processes; see the module docstring."""

    name = "local"

    def __init__(self, connection: Connection, workers: int):
        self.connection = connection
        self.workers = max(1, workers)
        self.last_results: list[ShardResult] = []

    def _run_shards(self, step, job, shards: list[list[ChunkRef]]) -> list:
        """``step(connection, job, i, shard)`` for every shard: in this process for one shard,
        else in a pool of fork-server workers that is terminated, never waited on, when one
        fails."""
        if len(shards) == 1:
            return [step(self.connection, job, 0, shards[0])]
        pool = ProcessPoolExecutor(
            max_workers=len(shards),
            mp_context=worker_context(["shared.executors.local"]),
            initializer=bind_worker_lifetime,
        )
        try:
            futures = [
                pool.submit(step, self.connection, job, i, shard) for i, shard in enumerate(shards)
            ]
            results = [f.result() for f in futures]
        except BaseException:
            # A dead worker (BrokenProcessPool), a failed shard or an interrupt: stop every
            # worker now; the run (or training job) fails the chunks that got no output file.
            terminate_pool(pool)
            raise
        pool.shutdown(wait=True)
        return results

    def submit(self, job: ScoringJob) -> Submission:
        job_id = f"local:{job.run_id}"
        shards = shard_chunks(job.chunks, self.workers)
        if not shards:
            return Submission(job_id, COMPLETED, message="no chunks to score")
        try:
            results = self._run_shards(score_shard, job, shards)
        except Exception as exc:  # noqa: BLE001 - the run records the failure with its reason
            log.exception("local scoring failed", extra={"run_id": job.run_id})
            return Submission(job_id, FAILED, message=f"{type(exc).__name__}: {exc}")
        self.last_results = results
        # Unreadable chunks need no special path: their predictions file carries the reason.
        return Submission(job_id, COMPLETED)

    def submit_training(self, job: TrainingJob) -> Submission:
        """Train the job's shards in the pool (synchronous, like :meth:`submit`): when it
        returns, every chunk that could be trained has its summary in the models container."""
        job_id = f"local:{job.job_id}"
        shards = shard_chunks(job.chunks, self.workers)
        if not shards:
            return Submission(job_id, COMPLETED, message="no chunks to train")
        try:
            results = self._run_shards(train_shard, job, shards)
        except Exception as exc:  # noqa: BLE001 - the job records the failure with its reason
            log.exception("local training failed", extra={"job_id": job.job_id})
            return Submission(job_id, FAILED, message=f"{type(exc).__name__}: {exc}")
        self.last_results = results
        return Submission(job_id, COMPLETED)

    def status(self, job_id: str) -> JobStatus:
        # Local jobs finish inside submit(); a job the reconciler still sees unfinished died
        # with its process, and the run's stall timeout handles it.
        return JobStatus(COMPLETED, "local jobs complete synchronously")

    def cancel(self, job_id: str) -> None:
        """Nothing to cancel: a local job is over by the time anyone could ask."""
        return None
