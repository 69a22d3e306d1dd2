"""``python -m shared.azureml``: provision the cluster and environment, or dump a run's job.

    python -m shared.azureml provision
    python -m shared.azureml dump-job RUN_ID [--out FILE] [--chunk-id ID ...]

``dump-job`` writes the pipeline job the executor would submit for a run as YAML (the format of
``az ml job create --file``), next to a staged copy of the job's code (``<FILE stem>-code/``), so
the YAML can be read, diffed or submitted by hand. The chunks are listed from the run's folder in
the chunks container, or given with ``--chunk-id`` (no storage needed). It contacts no Azure ML
service; ``provision`` does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.settings import Settings


def _chunks_of_run(settings: Settings, run_id: str, chunk_ids: Sequence[str]):
    from shared.blobs import BlobStore, chunk_blob, run_prefix
    from shared.executors.base import ChunkRef

    if chunk_ids:
        return tuple(ChunkRef(c, chunk_blob(run_id, c), ()) for c in chunk_ids)
    store = BlobStore.from_settings(settings)
    prefix = run_prefix(run_id)
    names = [
        n
        for n in store.list(settings.chunks_container, prefix)
        if n.endswith(".parquet") and "/" not in n[len(prefix) :]
    ]
    return tuple(ChunkRef(n[len(prefix) : -len(".parquet")], n, ()) for n in sorted(names))


def dump_job(settings: Settings, run_id: str, out: Path, chunk_ids: Sequence[str] = ()) -> Path:
    """Build the run's pipeline job offline and write it to ``out`` (YAML)."""
    from shared.azureml.client import compute_client_id
    from shared.azureml.code import stage_code
    from shared.azureml.jobs import build_pipeline_job, dump_pipeline_job
    from shared.executors.base import ScoringJob

    chunks = _chunks_of_run(settings, run_id, chunk_ids)
    job = ScoringJob(
        run_id=run_id,
        window_label="(from dump-job)",
        chunks=chunks,
        chunks_container=settings.chunks_container,
        models_container=settings.models_container,
        predictions_container=settings.predictions_container,
    )
    code_dir = stage_code(out.with_name(f"{out.stem}-code"))
    pipeline_job = build_pipeline_job(
        job, settings, code_dir=code_dir, client_id=compute_client_id(settings)
    )
    return dump_pipeline_job(pipeline_job, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.azureml", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("provision", help="create/update the compute cluster, register the environment")
    dump = sub.add_parser("dump-job", help="write a run's pipeline job as YAML (offline)")
    dump.add_argument("run_id")
    dump.add_argument("--out", type=Path, help="YAML file (default DATA_DIR/azureml/RUN_ID.yml)")
    dump.add_argument("--chunk-id", action="append", default=[], help="chunk id (repeatable)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "provision":
        from shared.azureml.provision import provision

        print(json.dumps(provision(settings), indent=2))
        return 0
    out = args.out or settings.data_dir / "azureml" / f"{args.run_id}.yml"
    print(dump_job(settings, args.run_id, out, args.chunk_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
