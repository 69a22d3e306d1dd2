"""The ``azureml`` executor, its pipeline job and the cluster/environment provisioning.

No Azure service is reachable here, so these tests check everything short of the service:

* the pipeline job of a run is built with azure-ai-ml and inspected as an object (steps,
  command lines, code, environment, compute, datastore paths, identity, names, tags), dumped to
  YAML and loaded back with ``azure.ai.ml.load_job``;
* the exact command line each Azure ML step would run is run here, in the staged code folder, with
  local folders in place of the mounts, and its prediction files are compared with the local
  executor's for the same chunks and model sets (on Azurite);
* submission, status and cancellation go through a fake of ``MLClient.jobs`` only (the boundary
  where requests would leave for Azure ML), so everything up to that call is the real SDK;
* the cluster and environment definitions serialise with the settings' values;
* importing ``function_app`` does not import ``azure.ai.ml``.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from scoring import fit_sensor_model, model_set_filename, write_model_set
from scoring.features import CHUNK_COLUMNS, DEFAULT_FEATURES
from scoring.modeling import model_set_format
from shared.azureml.code import stage_code
from shared.azureml.jobs import (
    CHUNKS_PLACEHOLDER,
    MODELS_PLACEHOLDER,
    OUTPUT_PLACEHOLDER,
    build_pipeline_job,
    command_line,
    dump_pipeline_job,
    node_name,
    plan_pipeline,
)
from shared.blobs import chunk_blob, model_set_blob
from shared.executors.azureml import AZUREML_STATES, AzureMLExecutor, map_status
from shared.executors.base import (
    CANCELED,
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    ChunkRef,
    ScoringJob,
    shard_chunks,
)
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
RUN_ID = "run-20260301T120000-0badcafe"
WINDOW = "2026-03-01T11:00:00/2026-03-01T12:00:00"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
IDENTITY_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-scoring/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/id-func-test"
)
AZUREML_ENV = {
    "EXECUTOR": "azureml",
    "AZUREML_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
    "AZUREML_RESOURCE_GROUP": "rg-scoring",
    "AZUREML_WORKSPACE": "mlw-scoring",
    "AZUREML_COMPUTE": "cpu-test",
    "AZUREML_VM_SIZE": "Standard_D4as_v4",
    "AZUREML_MAX_NODES": "4",
    "AZUREML_MAX_STEPS": "3",
    "AZUREML_IDLE_SECONDS": "600",
    "AZUREML_TIER": "low_priority",
    "AZUREML_EXPERIMENT": "scoring-tests",
    "AZUREML_ENVIRONMENT": "scoring-env",
    "AZUREML_ENVIRONMENT_VERSION": "7",
    "AZUREML_CHUNKS_DATASTORE": "ds_chunks",
    "AZUREML_MODELS_DATASTORE": "ds_models",
    "AZUREML_PREDICTIONS_DATASTORE": "ds_predictions",
    "RUN_TIMEOUT_MINUTES": "30",
}


@pytest.fixture
def sql_url(sqlite_url):
    """SQLite only: this module needs storage (Azurite), not a second SQL engine."""
    return sqlite_url


@pytest.fixture
def aml_settings(tmp_path) -> Settings:
    return Settings.from_env({"DATA_DIR": str(tmp_path / "data"), **AZUREML_ENV})


def scoring_job(chunk_ids, n_sensors=None, run_id=RUN_ID) -> ScoringJob:
    n_sensors = n_sensors or [2] * len(chunk_ids)
    return ScoringJob(
        run_id=run_id,
        window_label=WINDOW,
        chunks=tuple(
            ChunkRef(c, chunk_blob(run_id, c), (), n)
            for c, n in zip(chunk_ids, n_sensors, strict=True)
        ),
        chunks_container="chunks",
        models_container="models",
        predictions_container="predictions",
    )


SEVEN_CHUNKS = scoring_job([f"c{i:04d}" for i in range(7)], [3, 1, 2, 5, 2, 2, 1])


def expected_command(chunk_ids) -> str:
    return (
        "python -m scoring.score --chunks ${{inputs.chunks}} --models ${{inputs.models}} "
        "--output ${{outputs.predictions}}" + "".join(f" --chunk {c}.parquet" for c in chunk_ids)
    )


def describe(pipeline_job) -> dict:
    """The points a pipeline job must get right, from its serialised form (built or loaded)."""
    data = pipeline_job._to_dict()
    steps = {}
    for name, node in data["jobs"].items():
        component = node["component"]
        steps[name] = {
            "command": component["command"],
            "code": str(Path(component["code"]).resolve()),
            "environment": node["environment"].removeprefix("azureml:"),
            "component_environment": component["environment"].removeprefix("azureml:"),
            "compute": node["compute"].removeprefix("azureml:"),
            "inputs": {k: (v["type"], v["path"], v["mode"]) for k, v in node["inputs"].items()},
            "outputs": {k: (v["type"], v["path"], v["mode"]) for k, v in node["outputs"].items()},
            "identity": dict(node.get("identity") or {}),
            "timeout": (node.get("limits") or {}).get("timeout"),
            "display_name": component.get("display_name"),
            "tags": dict(component.get("tags") or {}),
            "is_deterministic": component.get("is_deterministic"),
        }
    return {
        "name": data["name"],
        "display_name": data["display_name"],
        "experiment_name": data["experiment_name"],
        "tags": dict(data["tags"]),
        "settings": {
            k: str(v).removeprefix("azureml:") for k, v in (data.get("settings") or {}).items()
        },
        "steps": steps,
    }


# --------------------------------------------------------------------------- the pipeline job


def test_pipeline_job_has_one_command_step_per_shard(aml_settings, tmp_path):
    code_dir = stage_code(tmp_path / "code")
    pipeline_job = build_pipeline_job(
        SEVEN_CHUNKS, aml_settings, code_dir=code_dir, client_id=CLIENT_ID
    )
    shards = shard_chunks(SEVEN_CHUNKS.chunks, 3)  # min(MAX_STEPS 3, MAX_NODES 4, 7 chunks)
    assert len(shards) == 3
    assert pipeline_job._validate().passed

    got = describe(pipeline_job)
    assert got["name"].startswith(f"{RUN_ID}-") and len(got["name"]) == len(RUN_ID) + 9
    assert got["experiment_name"] == "scoring-tests"
    assert RUN_ID in got["display_name"] and WINDOW in got["display_name"]
    assert got["tags"]["run_id"] == RUN_ID and got["tags"]["window"] == WINDOW
    assert got["tags"]["steps"] == "3" and got["tags"]["chunks"] == "7"
    assert got["settings"] == {
        "default_compute": "cpu-test",
        "continue_on_step_failure": "True",
        "force_rerun": "True",
    }
    assert list(got["steps"]) == [node_name(RUN_ID, i) for i in range(3)]
    assert list(got["steps"])[0] == "score_run_20260301t120000_0badcafe_01"

    scored = []
    for index, step in enumerate(got["steps"].values()):
        ids = [c.chunk_id for c in shards[index]]
        scored += ids
        assert step["command"] == expected_command(ids)
        assert step["code"] == str(code_dir.resolve())
        assert (Path(step["code"]) / "scoring" / "score.py").is_file()
        assert step["environment"] == step["component_environment"] == "scoring-env:7"
        assert step["compute"] == "cpu-test"
        assert step["inputs"] == {
            "chunks": (
                "uri_folder",
                f"azureml://datastores/ds_chunks/paths/runs/{RUN_ID}/",
                "ro_mount",
            ),
            "models": ("uri_folder", "azureml://datastores/ds_models/paths/sets/", "ro_mount"),
        }
        assert step["outputs"] == {
            "predictions": (
                "uri_folder",
                f"azureml://datastores/ds_predictions/paths/runs/{RUN_ID}/",
                "rw_mount",
            ),
        }
        assert step["identity"] == {"type": "managed_identity", "client_id": CLIENT_ID}
        assert step["timeout"] == 30 * 60
        assert step["is_deterministic"] is False
        assert step["display_name"] == f"{RUN_ID} shard {index + 1}/3"
        assert step["tags"]["run_id"] == RUN_ID and step["tags"]["window"] == WINDOW
        assert step["tags"]["shard"] == f"{index + 1}/3"
        assert step["tags"]["sensors"] == str(sum(c.n_sensors for c in shards[index]))
    assert scored == [c.chunk_id for c in SEVEN_CHUNKS.chunks]  # each chunk once, in order

    # The same points on the SDK objects themselves, and in the REST body that would be sent.
    rest = pipeline_job._to_rest_object().as_dict()["properties"]
    assert rest["experimentName"] == "scoring-tests"
    assert rest["settings"]["continue_on_step_failure"] is True
    for index, (name, node) in enumerate(pipeline_job.jobs.items()):
        assert node.name == name
        assert node.environment == "azureml:scoring-env:7"
        assert node.compute == "cpu-test"
        assert node.code == str(code_dir.resolve())
        assert node.command == expected_command([c.chunk_id for c in shards[index]])
        assert node.inputs.chunks._data.path.endswith(f"/paths/runs/{RUN_ID}/")
        assert node.outputs.predictions._data.mode == "rw_mount"
        body = rest["jobs"][name]
        assert {k: v["mode"] for k, v in body["inputs"].items()} == {
            "chunks": "ReadOnlyMount",
            "models": "ReadOnlyMount",
        }
        assert body["outputs"]["predictions"]["mode"] == "ReadWriteMount"
        assert body["identity"] == {"client_id": CLIENT_ID, "identity_type": "Managed"}
        assert body["limits"]["timeout"] == "PT30M"
        assert body["tags"]["run_id"] == RUN_ID
        assert body["outputs"]["predictions"]["uri"] == (
            f"azureml://datastores/ds_predictions/paths/runs/{RUN_ID}/"
        )


def test_pipeline_job_survives_yaml_round_trip(aml_settings, tmp_path):
    from azure.ai.ml import load_job
    from azure.ai.ml.entities import Command, ManagedIdentityConfiguration, PipelineJob

    code_dir = stage_code(tmp_path / "code")
    built = build_pipeline_job(SEVEN_CHUNKS, aml_settings, code_dir=code_dir, client_id=CLIENT_ID)
    path = dump_pipeline_job(built, tmp_path / "job" / "pipeline.yml")
    text = path.read_text()
    assert "${{inputs.chunks}}" in text and "rw_mount" in text

    loaded = load_job(path)
    assert isinstance(loaded, PipelineJob)
    assert describe(loaded) == describe(built)
    for node in loaded.jobs.values():
        assert isinstance(node, Command)
        assert isinstance(node.identity, ManagedIdentityConfiguration)
        assert node.identity.client_id == CLIENT_ID
    assert yaml.safe_load(text)["type"] == "pipeline"


def test_steps_never_outnumber_nodes_or_chunks(tmp_path):
    few_nodes = Settings.from_env(
        {
            "DATA_DIR": str(tmp_path),
            **AZUREML_ENV,
            "AZUREML_MAX_NODES": "2",
            "AZUREML_MAX_STEPS": "8",
        }
    )
    assert len(plan_pipeline(SEVEN_CHUNKS, few_nodes).steps) == 2
    two_chunks = scoring_job(["a", "b"])
    assert len(plan_pipeline(two_chunks, few_nodes).steps) == 2
    one_chunk = scoring_job(["only"])
    plan = plan_pipeline(one_chunk, few_nodes)
    assert [s.chunk_files for s in plan.steps] == [["only.parquet"]]


def test_plan_rejects_jobs_it_cannot_mount(aml_settings):
    with pytest.raises(ValueError, match="no chunks"):
        plan_pipeline(scoring_job([]), aml_settings)
    outside = dataclasses.replace(
        SEVEN_CHUNKS, chunks=(ChunkRef("c9", "runs/another-run/c9.parquet", ()),)
    )
    with pytest.raises(ValueError, match="not under"):
        plan_pipeline(outside, aml_settings)


def test_command_line_keeps_placeholders_and_quotes_the_rest():
    argv = [
        "python",
        "-m",
        "scoring.score",
        "--chunks",
        CHUNKS_PLACEHOLDER,
        "--models",
        MODELS_PLACEHOLDER,
        "--output",
        OUTPUT_PLACEHOLDER,
        "--chunk",
        "a b;rm -rf.parquet",
    ]
    line = command_line(argv)
    assert "${{inputs.chunks}} --models ${{inputs.models}}" in line
    assert shlex.split(line)[-1] == "a b;rm -rf.parquet"


def test_without_client_id_steps_run_as_the_submitting_user(aml_settings, tmp_path):
    from azure.ai.ml.entities import UserIdentityConfiguration

    job = build_pipeline_job(SEVEN_CHUNKS, aml_settings, code_dir=stage_code(tmp_path / "c"))
    assert all(isinstance(n.identity, UserIdentityConfiguration) for n in job.jobs.values())


def test_staged_code_is_the_scoring_package_only(tmp_path):
    code_dir = stage_code(tmp_path / "code")
    assert [p.name for p in code_dir.iterdir()] == ["scoring"]
    staged = {
        p.relative_to(code_dir / "scoring").as_posix()
        for p in (code_dir / "scoring").rglob("*")
        if p.is_file()
    }
    assert {"__init__.py", "score.py", "environment.yml"} <= staged
    assert not [s for s in staged if "__pycache__" in s or s.endswith(".pyc")]


# --------------------------------------------------------------------------- same predictions


def make_run_files(root: Path, run_id: str) -> tuple[Path, Path, list[ChunkRef]]:
    """Chunk files of a run and the model sets they name, as the app would write them.

    Two devices with three sensors each, one model set per device; device ``d2``'s sensor
    ``s9`` names a model set that does not exist, so an errors file is written as well.
    """
    rng = np.random.default_rng(7)
    chunks_dir, models_dir = root / "chunks", root / "models"
    chunks_dir.mkdir(parents=True)
    models_dir.mkdir(parents=True)
    levels = {"s1": 12.5, "s2": 35.0, "s3": 62.5}
    set_files = {}
    for device in ("d1", "d2"):
        models = []
        for sensor, level in levels.items():
            train = pd.DataFrame(
                {"mean": level + rng.normal(0, 0.3, 120), "std": rng.uniform(0.8, 1.6, 120)}
            )
            train["min"] = train["mean"] - 2 * train["std"]
            train["max"] = train["mean"] + 2 * train["std"]
            models.append(fit_sensor_model(device, sensor, 1, train))
        name = model_set_filename(f"set-{device}", model_set_format(models))
        write_model_set(models_dir / name, models)
        set_files[device] = name

    start = pd.Timestamp("2026-03-01T11:00:00Z")
    buckets = pd.date_range(start, periods=30, freq="1min")
    sensors = [(d, s, set_files[d]) for d in ("d1", "d2") for s in levels]
    sensors.append(("d2", "s9", "set-missing.npz"))
    groups = [sensors[0:3], sensors[3:5], sensors[5:7]]
    refs = []
    for index, group in enumerate(groups):
        frames = []
        for device, sensor, model_file in group:
            level = levels.get(sensor, 50.0)
            mean = level + rng.normal(0, 0.3, len(buckets))
            mean[-1] += 25.0  # one obvious anomaly per sensor
            std = rng.uniform(0.8, 1.6, len(buckets))
            frames.append(
                pd.DataFrame(
                    {
                        "device": device,
                        "sensor": sensor,
                        "bucket_start": buckets,
                        "count": 12,
                        "mean": mean,
                        "min": mean - 2 * std,
                        "max": mean + 2 * std,
                        "std": std,
                        "model_file": model_file,
                        "model_version": 1,
                    }
                )
            )
        frame = pd.concat(frames, ignore_index=True)[list(CHUNK_COLUMNS)]
        table = pa.Table.from_pandas(frame, preserve_index=False)
        chunk_id = f"c{index:04d}"
        pq.write_table(table, chunks_dir / f"{chunk_id}.parquet")
        refs.append(
            ChunkRef(
                chunk_id,
                chunk_blob(run_id, chunk_id),
                tuple(sorted({g[2] for g in group})),
                len(group),
            )
        )
    assert set(DEFAULT_FEATURES) <= set(CHUNK_COLUMNS)
    return chunks_dir, models_dir, refs


def run_step_locally(command: str, code_dir: Path, mounts: dict[str, Path]) -> None:
    """Run a step's command line as Azure ML would, with local folders for the mounts."""
    for placeholder, folder in mounts.items():
        command = command.replace(placeholder, shlex.quote(str(folder)))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        shlex.split(command), cwd=code_dir, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_azureml_steps_write_what_the_local_executor_writes(settings, tmp_path):
    from shared.blobs import BlobStore
    from shared.executors.local import LocalExecutor

    chunks_dir, models_dir, refs = make_run_files(tmp_path / "run", RUN_ID)
    job = ScoringJob(
        RUN_ID,
        WINDOW,
        tuple(refs),
        settings.chunks_container,
        settings.models_container,
        settings.predictions_container,
    )
    store = BlobStore.from_settings(settings)
    for ref in refs:
        store.upload_file(job.chunks_container, ref.blob, chunks_dir / f"{ref.chunk_id}.parquet")
    for path in models_dir.iterdir():
        store.upload_file(job.models_container, model_set_blob(path.name), path)

    local = LocalExecutor(settings.storage, workers=2).submit(job)
    assert local.state == COMPLETED, local.message

    aml = dataclasses.replace(settings, azureml=Settings.from_env(AZUREML_ENV).azureml)
    code_dir = stage_code(tmp_path / "code")
    pipeline_job = build_pipeline_job(job, aml, code_dir=code_dir)
    assert len(pipeline_job.jobs) == 3
    output_dir = tmp_path / "azureml-output"
    mounts = {
        CHUNKS_PLACEHOLDER: chunks_dir,
        MODELS_PLACEHOLDER: models_dir,
        OUTPUT_PLACEHOLDER: output_dir,
    }
    for node in pipeline_job.jobs.values():
        assert node.command.startswith("python -m scoring.score ")
        run_step_locally(node.command, code_dir, mounts)

    written = sorted(p.name for p in output_dir.iterdir() if not p.name.startswith("."))
    uploaded = sorted(
        name.rsplit("/", 1)[1] for name in store.list(job.predictions_container, f"runs/{RUN_ID}/")
    )
    assert written == uploaded
    assert f"{refs[2].chunk_id}.errors.parquet" in written  # the sensor without a model set
    assert sum(n.endswith(".predictions.parquet") for n in written) == 3
    for name in written:
        ours = pq.read_table(output_dir / name)
        theirs = pq.read_table(
            pa.BufferReader(store.download(job.predictions_container, f"runs/{RUN_ID}/{name}"))
        )
        assert ours.equals(theirs, check_metadata=True), name
        if name.endswith(".predictions.parquet"):
            assert ours.num_rows > 0 and pc.any(ours["is_anomaly"]).as_py()


# --------------------------------------------------------------------------- submit, status, cancel


class FakeJobs:
    """Stands in for ``MLClient.jobs`` (JobOperations): the calls the executor makes there."""

    def __init__(self, status="NotStarted"):
        self.status = status
        self.sent = []  # every job passed to create_or_update
        self.created = []  # names of the jobs Azure ML accepted
        self.canceled = []
        self.create_error: Exception | None = None
        self.code_seen: list[bool] = []
        self.run_errors: dict[str, SimpleNamespace] = {}
        self.children: list[SimpleNamespace] = []
        self._runs_operations = SimpleNamespace(get_run_details=self._run_details)

    def _record(self, name, status):
        return SimpleNamespace(
            name=name,
            status=status,
            studio_url=f"https://ml.azure.com/runs/{name}?wsid=/subscriptions/x",
        )

    def create_or_update(self, job, **kwargs):
        # azure-ai-ml uploads the code folder inside this call: it must still exist here.
        self.code_seen += [
            (Path(n.code) / "scoring" / "score.py").is_file() for n in job.jobs.values()
        ]
        self.sent.append((job, kwargs))
        if self.create_error is not None:
            raise self.create_error
        self.created.append(job.name)
        return self._record(job.name, self.status)

    def get(self, name):
        if name not in self.created and name != "known-job":
            raise ResourceNotFoundError(f"job {name} not found")
        return self._record(name, self.status)

    def begin_cancel(self, name):
        self.get(name)
        self.canceled.append(name)
        return SimpleNamespace(result=lambda: None)

    def list(self, parent_job_name=None):
        return list(self.children)

    def _run_details(self, name):
        if name not in self.run_errors:
            return SimpleNamespace(error=None)
        return SimpleNamespace(error=SimpleNamespace(error=self.run_errors[name]))


def fake_executor(aml_settings, status="NotStarted") -> tuple[AzureMLExecutor, FakeJobs]:
    jobs = FakeJobs(status)
    return AzureMLExecutor(aml_settings, SimpleNamespace(jobs=jobs), client_id=CLIENT_ID), jobs


def test_submit_sends_the_built_pipeline_job(aml_settings, tmp_path):
    executor, jobs = fake_executor(aml_settings)
    submission = executor.submit(SEVEN_CHUNKS)

    ((sent, kwargs),) = jobs.sent
    assert kwargs["experiment_name"] == "scoring-tests"
    assert jobs.code_seen == [True, True, True]
    expected = executor.build(SEVEN_CHUNKS, stage_code(tmp_path / "code"), job_name=sent.name)
    ours, theirs = describe(sent), describe(expected)
    for step in (*ours["steps"].values(), *theirs["steps"].values()):
        step.pop("code")  # staged in a temporary folder, gone after submission
    assert ours == theirs
    assert submission.job_id == sent.name and sent.name.startswith(RUN_ID)
    assert submission.state == QUEUED
    assert submission.url.startswith("https://ml.azure.com/runs/" + sent.name)


def test_submit_failure_is_reported_with_azure_ml_words(aml_settings):
    executor, jobs = fake_executor(aml_settings)
    jobs.create_error = HttpResponseError(message="Compute cpu-test not found in workspace")
    submission = executor.submit(SEVEN_CHUNKS)
    assert submission.state == FAILED
    assert "Compute cpu-test not found" in submission.message


def test_submit_that_raised_after_acceptance_finds_the_job(aml_settings):
    executor, jobs = fake_executor(aml_settings, status="Running")
    jobs.create_error = TimeoutError("read timed out")
    jobs.get = lambda name: jobs._record(name, "Running")  # Azure ML did create it
    submission = executor.submit(SEVEN_CHUNKS)
    assert submission.state == RUNNING
    assert submission.job_id == jobs.sent[0][0].name


def test_a_run_without_chunks_submits_nothing(aml_settings):
    executor, jobs = fake_executor(aml_settings)
    submission = executor.submit(scoring_job([]))
    assert submission.state == COMPLETED and not jobs.created
    assert executor.status(submission.job_id).state == COMPLETED


@pytest.mark.parametrize(
    ("azureml_status", "state"),
    [
        ("NotStarted", QUEUED),
        ("Queued", QUEUED),
        ("Preparing", QUEUED),
        ("Starting", QUEUED),
        ("Provisioning", QUEUED),
        ("Paused", QUEUED),
        ("Running", RUNNING),
        ("Finalizing", RUNNING),
        ("CancelRequested", RUNNING),
        ("Completed", COMPLETED),
        ("Failed", FAILED),
        ("Canceled", CANCELED),
        ("NotResponding", FAILED),
        ("Unknown", RUNNING),
        ("SomethingNew", RUNNING),
        (None, RUNNING),
    ],
)
def test_azure_ml_statuses_map_onto_job_states(azureml_status, state):
    assert map_status(azureml_status) == state


def test_every_documented_azure_ml_status_is_mapped():
    from azure.ai.ml.operations._run_history_constants import RunHistoryConstants

    assert set(RunHistoryConstants.ALL_STATUSES) <= set(AZUREML_STATES)


def test_failed_job_status_carries_the_failed_steps_errors(aml_settings):
    executor, jobs = fake_executor(aml_settings, status="Failed")
    jobs.run_errors["known-job"] = SimpleNamespace(
        code="UserError",
        message="Pipeline has some failed steps. See child run or execution logs for more details.",
    )
    jobs.children = [
        SimpleNamespace(name="child-1", display_name=f"{RUN_ID} shard 1/3", status="Completed"),
        SimpleNamespace(name="child-2", display_name=f"{RUN_ID} shard 2/3", status="Failed"),
    ]
    jobs.run_errors["child-2"] = SimpleNamespace(
        code="UserError", message="Execution failed. User process 'python' exited with status 1"
    )
    status = executor.status("known-job")
    assert status.state == FAILED and status.terminal
    assert "UserError: Pipeline has some failed steps" in status.message
    assert f"step {RUN_ID} shard 2/3: UserError: Execution failed" in status.message
    assert "shard 1/3" not in status.message
    assert "https://ml.azure.com/runs/known-job" in status.message


def test_failed_job_status_without_details_still_says_failed(aml_settings):
    executor, jobs = fake_executor(aml_settings, status="Failed")
    jobs._runs_operations = SimpleNamespace(get_run_details=_raise_http)
    jobs.list = _raise_http
    status = executor.status("known-job")
    assert status.state == FAILED
    assert status.message.startswith("Azure ML job known-job Failed")


def _raise_http(*args, **kwargs):
    raise HttpResponseError(message="service unavailable")


def test_canceled_and_completed_statuses(aml_settings):
    executor, jobs = fake_executor(aml_settings, status="Canceled")
    jobs.run_errors["known-job"] = SimpleNamespace(code="UserError", message="Canceled by alice")
    status = executor.status("known-job")
    assert status.state == CANCELED and "Canceled by alice" in status.message

    jobs.status = "Completed"
    assert executor.status("known-job").state == COMPLETED
    assert executor.status("known-job").message is None


def test_unknown_job_is_failed_and_transient_errors_propagate(aml_settings):
    executor, jobs = fake_executor(aml_settings)
    status = executor.status("no-such-job")
    assert status.state == FAILED and "not found" in status.message
    jobs.get = _raise_http
    with pytest.raises(HttpResponseError):
        executor.status("known-job")  # the reconciler retries on its next tick


def test_cancel_asks_azure_ml(aml_settings):
    executor, jobs = fake_executor(aml_settings)
    executor.cancel("known-job")
    executor.cancel("no-such-job")  # nothing to cancel: no error
    assert jobs.canceled == ["known-job"]


def test_from_settings_connects_to_the_workspace_offline(aml_settings, monkeypatch):
    from azure.ai.ml import MLClient

    from shared.executors import make_executor

    with_identity = Settings.from_env(
        {**AZUREML_ENV, "AZURE_CLIENT_ID": CLIENT_ID, "DATA_DIR": str(aml_settings.data_dir)}
    )
    executor = make_executor(with_identity)
    assert isinstance(executor, AzureMLExecutor) and executor.client_id == CLIENT_ID
    client = executor.ml_client  # built, not called: no network
    assert isinstance(client, MLClient)
    assert (client.subscription_id, client.resource_group_name, client.workspace_name) == (
        AZUREML_ENV["AZUREML_SUBSCRIPTION_ID"],
        "rg-scoring",
        "mlw-scoring",
    )
    assert AzureMLExecutor.from_settings(aml_settings).client_id is None


# --------------------------------------------------------------------------- provisioning


def test_cluster_definition_serialises_the_settings(aml_settings):
    from shared.azureml.provision import cluster_definition

    cluster = cluster_definition(aml_settings, identity_resource_id=IDENTITY_ID)._to_dict()
    assert cluster["name"] == "cpu-test" and cluster["type"] == "amlcompute"
    assert cluster["size"] == "Standard_D4as_v4"
    assert cluster["min_instances"] == 0 and cluster["max_instances"] == 4
    assert cluster["idle_time_before_scale_down"] == 600
    assert cluster["tier"] == "low_priority"
    assert cluster["ssh_public_access_enabled"] is False
    assert cluster["identity"]["type"] == "user_assigned"
    assert [i["resource_id"] for i in cluster["identity"]["user_assigned_identities"]] == [
        IDENTITY_ID
    ]


def test_environment_definition_is_scoring_environment_yml(aml_settings):
    from shared.azureml.provision import environment_definition

    env = environment_definition(aml_settings)._to_dict()
    assert (env["name"], env["version"]) == ("scoring-env", "7")
    assert env["image"] == aml_settings.azureml.base_image
    assert env["conda_file"] == yaml.safe_load((ROOT / "scoring" / "environment.yml").read_text())


class FakeOperations:
    def __init__(self, existing=None):
        self.existing = existing
        self.sent = []

    def get(self, *args, **kwargs):
        if self.existing is None:
            raise ResourceNotFoundError("not found")
        return self.existing

    def begin_create_or_update(self, entity):
        self.sent.append(entity)
        return SimpleNamespace(result=lambda: entity)

    def begin_update(self, entity):
        self.sent.append(entity)
        return SimpleNamespace(result=lambda: entity)

    def create_or_update(self, entity):
        self.sent.append(entity)
        return entity


def test_provision_creates_cluster_and_registers_environment_once(aml_settings):
    from shared.azureml.provision import environment_definition, provision

    client = SimpleNamespace(compute=FakeOperations(), environments=FakeOperations())
    with_identity = Settings.from_env(
        {
            **AZUREML_ENV,
            "AZUREML_IDENTITY_RESOURCE_ID": IDENTITY_ID,
            "DATA_DIR": str(aml_settings.data_dir),
        }
    )
    report = provision(with_identity, client)
    assert report["compute"] == {
        "name": "cpu-test",
        "action": "created",
        "size": "Standard_D4as_v4",
        "tier": "low_priority",
        "min_nodes": 0,
        "max_nodes": 4,
        "idle_seconds": 600,
        "identity": [IDENTITY_ID],
    }
    assert report["environment"]["action"] == "registered"
    assert report["environment"]["reference"] == "azureml:scoring-env:7"
    assert len(client.environments.sent) == 1

    # Second time: the environment exists unchanged, and so does the cluster, which keeps the
    # identity it has when none is configured: nothing is sent.
    (cluster,) = client.compute.sent
    again = SimpleNamespace(
        compute=FakeOperations(existing=cluster),
        environments=FakeOperations(existing=environment_definition(aml_settings)),
    )
    report = provision(aml_settings, again)
    assert report["compute"]["action"] == "unchanged" and not again.compute.sent
    assert report["compute"]["identity"] == [IDENTITY_ID]
    assert report["environment"]["action"] == "exists" and not again.environments.sent


def test_provision_reports_a_stale_environment_version(aml_settings):
    from shared.azureml.provision import environment_definition, provision

    registered = environment_definition(aml_settings)
    registered.conda_file = {"dependencies": ["python=3.9"]}
    client = SimpleNamespace(compute=FakeOperations(), environments=FakeOperations(registered))
    report = provision(aml_settings, client)
    assert report["environment"]["action"] == "stale"
    assert "AZUREML_ENVIRONMENT_VERSION" in report["environment"]["message"]


def bicep_cluster(**overrides):
    """The cluster as Azure returns it after ``azd provision`` created it from
    ``infra/app/azureml.bicep`` (its REST body, VM size in Azure's upper case, azd's tags)."""
    scale = {"minNodeCount": 0, "maxNodeCount": 4, "nodeIdleTimeBeforeScaleDown": "PT600S"}
    scale.update(overrides.pop("scale", {}))
    from azure.ai.ml._restclient.arm_ml_service.models import ComputeResource
    from azure.ai.ml.entities import Compute

    body = {
        "id": "/subscriptions/0/resourceGroups/rg-scoring/providers/"
        "Microsoft.MachineLearningServices/workspaces/mlw-scoring/computes/cpu-test",
        "name": "cpu-test",
        "location": "westeurope",
        "tags": {"azd-env-name": "scoring-dev"},
        "identity": {
            "type": "UserAssigned",
            "userAssignedIdentities": {IDENTITY_ID: {"principalId": "p", "clientId": CLIENT_ID}},
        },
        "properties": {
            "computeType": "AmlCompute",
            "description": "CPU cluster for the scoring steps; scales to zero between runs",
            "disableLocalAuth": True,
            "provisioningState": "Succeeded",
            "properties": {
                "vmSize": "STANDARD_D4AS_V4",
                "vmPriority": overrides.pop("vmPriority", "LowPriority"),
                "osType": "Linux",
                "remoteLoginPortPublicAccess": "Disabled",
                "enableNodePublicIp": True,
                "scaleSettings": scale,
            },
        },
    }
    assert not overrides
    return Compute._from_rest_object(ComputeResource(body))


def bicep_output_settings(aml_settings, **env) -> Settings:
    """Settings as ``azd env get-values`` gives them after ``azd provision`` (Bicep outputs)."""
    return Settings.from_env(
        {
            **AZUREML_ENV,
            "AZUREML_IDENTITY_RESOURCE_ID": IDENTITY_ID,
            "DATA_DIR": str(aml_settings.data_dir),
            **env,
        }
    )


def test_provision_after_azd_provision_leaves_the_bicep_cluster_alone(aml_settings):
    """``azureml provision`` right after ``azd provision``: the cluster Bicep created already
    has the settings' values, so nothing is sent to Azure ML (its endpoint is mocked here)."""
    from shared.azureml.provision import environment_definition, provision

    client = SimpleNamespace(
        compute=FakeOperations(existing=bicep_cluster()),
        environments=FakeOperations(existing=environment_definition(aml_settings)),
    )
    report = provision(bicep_output_settings(aml_settings), client)
    assert report["compute"]["action"] == "unchanged"
    assert client.compute.sent == []
    assert report["compute"]["tier"] == "low_priority"


def test_provision_updates_only_the_scale_of_a_bicep_cluster(aml_settings):
    """A new AZUREML_MAX_NODES updates the existing cluster (Azure ML mocked): the entity sent is
    the cluster as it exists with new scale settings, so its VM priority, tags, description and
    local-auth setting stay what Bicep made them (a full definition would have replaced them)."""
    from shared.azureml.provision import provision

    client = SimpleNamespace(
        compute=FakeOperations(existing=bicep_cluster()), environments=FakeOperations()
    )
    settings = bicep_output_settings(aml_settings, AZUREML_MAX_NODES="8")
    report = provision(settings, client)
    assert report["compute"]["action"] == "updated"
    assert report["compute"]["differences"] == {"max_nodes": [4, 8]}
    (sent,) = client.compute.sent
    rest = sent._to_rest_object().as_dict()
    assert rest["tags"] == {"azd-env-name": "scoring-dev"}
    props = rest["properties"]
    assert props["description"].startswith("CPU cluster for the scoring steps")
    assert props["disableLocalAuth"] is True
    assert props["properties"]["vmPriority"] == "LowPriority"
    assert props["properties"]["vmSize"] == "STANDARD_D4AS_V4"
    assert props["properties"]["scaleSettings"]["maxNodeCount"] == 8
    assert props["properties"]["remoteLoginPortPublicAccess"] == "Disabled"
    assert list(rest["identity"]["userAssignedIdentities"]) == [IDENTITY_ID]


def test_provision_never_sends_a_vm_priority_bicep_did_not_choose(aml_settings):
    """Settings that disagree with the deployed cluster's priority (AZUREML_TIER unset, so
    ``dedicated``, against a LowPriority cluster): nothing is sent and the report says why and
    what to set (Azure ML mocked)."""
    from shared.azureml.provision import provision

    client = SimpleNamespace(
        compute=FakeOperations(existing=bicep_cluster()), environments=FakeOperations()
    )
    report = provision(bicep_output_settings(aml_settings, AZUREML_TIER="dedicated"), client)
    assert report["compute"]["action"] == "differs"
    assert report["compute"]["differences"]["tier"] == ["low_priority", "dedicated"]
    assert "AZUREML_TIER" in report["compute"]["message"]
    assert client.compute.sent == []


def test_dump_job_command_writes_the_runs_job(aml_settings, tmp_path, monkeypatch):
    """``python -m shared.azureml dump-job`` (it crashed: compute_client_id() without settings)."""
    from azure.ai.ml import load_job
    from azure.ai.ml.entities import ManagedIdentityConfiguration

    from shared.azureml.__main__ import main

    for name, value in {**AZUREML_ENV, "AZURE_CLIENT_ID": CLIENT_ID}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "dump" / "job.yml"
    assert main(["dump-job", RUN_ID, "--out", str(out), "--chunk-id", "c0000"]) == 0
    job = load_job(out)
    (node,) = job.jobs.values()
    assert "--chunk c0000.parquet" in node.command
    assert isinstance(node.identity, ManagedIdentityConfiguration)
    assert node.identity.client_id == CLIENT_ID
    assert (tmp_path / "dump" / "job-code" / "scoring" / "score.py").exists()


# --------------------------------------------------------------------------- import cost


def test_importing_function_app_does_not_import_azure_ai_ml():
    code = (
        "import sys, function_app, shared.executors, shared.azureml, shared.executors.azureml; "
        "assert 'azure.ai.ml' not in sys.modules, 'azure.ai.ml was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DATA_DIR": str(ROOT / ".data")},
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- training jobs

TRAINING_JOB_ID = "train-20260301T040000-0badcafe0bad-1"


def training_job(chunk_ids, n_sensors=None):
    from shared.blobs import training_chunk_blob
    from shared.executors.base import TrainingJob

    n_sensors = n_sensors or [2] * len(chunk_ids)
    return TrainingJob(
        TRAINING_JOB_ID,
        WINDOW,
        tuple(
            ChunkRef(c, training_chunk_blob(TRAINING_JOB_ID, c), (), n)
            for c, n in zip(chunk_ids, n_sensors, strict=True)
        ),
        "chunks",
        "models",
    )


def test_training_pipeline_job_has_parallel_training_steps(aml_settings, tmp_path):
    """Same shape as a run's job: one command step per shard (AZUREML_MAX_STEPS 3 here), each
    `python -m scoring.train` over its chunks, the job's chunk folder mounted read-only, model
    sets and summaries written through rw_mount outputs on the models datastore."""
    from azure.ai.ml import load_job

    from shared.azureml.jobs import build_training_pipeline_job, training_node_name

    job = training_job([f"c{i:05d}" for i in range(5)], [3, 1, 2, 5, 2])
    code_dir = stage_code(tmp_path / "code")
    built = build_training_pipeline_job(job, aml_settings, code_dir=code_dir, client_id=CLIENT_ID)
    assert built._validate().passed
    got = describe(built)
    shards = shard_chunks(job.chunks, 3)
    assert list(got["steps"]) == [training_node_name(TRAINING_JOB_ID, i) for i in range(3)]
    assert got["tags"]["training_job_id"] == TRAINING_JOB_ID
    assert got["settings"]["continue_on_step_failure"] == "True"
    for index, step in enumerate(got["steps"].values()):
        assert step["command"] == (
            "python -m scoring.train --chunks ${{inputs.chunks}} --output "
            "${{outputs.summaries}} --models-output ${{outputs.model_sets}}"
            + "".join(f" --chunk {c.chunk_id}.parquet" for c in shards[index])
        )
        assert (Path(step["code"]) / "scoring" / "train.py").is_file()
        assert step["inputs"] == {
            "chunks": (
                "uri_folder",
                f"azureml://datastores/ds_chunks/paths/training/{TRAINING_JOB_ID}/",
                "ro_mount",
            )
        }
        assert step["outputs"] == {
            "summaries": (
                "uri_folder",
                f"azureml://datastores/ds_models/paths/training/{TRAINING_JOB_ID}/",
                "rw_mount",
            ),
            "model_sets": ("uri_folder", "azureml://datastores/ds_models/paths/sets/", "rw_mount"),
        }
        assert step["identity"] == {"type": "managed_identity", "client_id": CLIENT_ID}
        assert step["timeout"] == 30 * 60 and step["is_deterministic"] is False
    loaded = load_job(dump_pipeline_job(built, tmp_path / "job" / "training.yml"))
    assert describe(loaded) == got


@pytest.fixture
def training_ctx(ctx, monkeypatch):
    """The test's app context on EXECUTOR=azureml, its workspace client a fake of
    ``MLClient.jobs`` only (Azure ML's service cannot be reached here); hourly retraining over
    4 hours."""
    import shared.executors.azureml as azureml_executor

    aml = Settings.from_env(AZUREML_ENV).azureml
    ctx.settings = dataclasses.replace(
        ctx.settings,
        executor="azureml",
        azureml=aml,
        train_window_hours=4.0,
        training_schedule="0 0 * * * *",
    )
    fake = FakeJobs("Running")
    monkeypatch.setitem(
        azureml_executor._clients,
        (aml.subscription_id, aml.resource_group, aml.workspace),
        SimpleNamespace(jobs=fake),
    )
    return ctx, fake


def run_training_steps_as_the_cluster_would(ctx, pipeline_job, root: Path) -> None:
    """Each step's exact command line run here in the staged code folder, with local folders
    for the mounts; then the outputs copied to Azurite where the rw_mounts would put them."""
    from shared.azureml.jobs import MODEL_SETS_PLACEHOLDER, SUMMARIES_PLACEHOLDER

    settings = ctx.settings
    job_id = pipeline_job.tags["training_job_id"]
    chunks_dir, summaries, sets = root / "chunks", root / "summaries", root / "sets"
    for name in ctx.store.list(settings.chunks_container, f"training/{job_id}/"):
        ctx.store.download_to(settings.chunks_container, name, chunks_dir / name.rsplit("/")[-1])
    code_dir = stage_code(root / "code")
    mounts = {
        CHUNKS_PLACEHOLDER: chunks_dir,
        SUMMARIES_PLACEHOLDER: summaries,
        MODEL_SETS_PLACEHOLDER: sets,
    }
    for node in pipeline_job.jobs.values():
        run_step_locally(node.command, code_dir, mounts)
    for path in sets.iterdir():
        if not path.name.startswith("."):
            ctx.store.upload_file(settings.models_container, model_set_blob(path.name), path)
    for path in summaries.iterdir():
        if not path.name.startswith("."):
            ctx.store.upload_file(settings.models_container, f"training/{job_id}/{path.name}", path)


def test_training_on_azure_ml_returns_at_once_and_completes_on_the_next_collect(
    training_ctx, tmp_path
):
    """The timer's call writes the chunks, submits the pipeline job and returns with nothing
    registered; the steps run (here, their command lines); the next collect (every tick does
    one) registers and activates every model, once."""
    from shared.training import jobs as training_jobs
    from shared.training.service import collect_training, retrain_due
    from tests.test_retraining import HOUR, T0, active, ingest, versions

    ctx, fake = training_ctx
    ids = ingest(hours=4)
    report = retrain_due(ctx, T0 + 4 * HOUR)
    assert report.job_status == training_jobs.TRAINING and report.activated == []
    ((sent, _),) = fake.sent
    job = training_jobs.get_job(ctx.engine, report.job_id)
    assert job.backend_job_id == sent.name and job.job_url.startswith("https://ml.azure.com/")
    assert all(n.command.startswith("python -m scoring.train ") for n in sent.jobs.values())
    assert collect_training(ctx) == [] and active(ctx) == {}  # still training

    run_training_steps_as_the_cluster_would(ctx, sent, tmp_path / "cluster")
    fake.status = "Completed"
    outcomes = collect_training(ctx)
    assert sorted(a for o in outcomes for a in o.activated) == [(d, s, 1) for d, s in sorted(ids)]
    assert training_jobs.get_job(ctx.engine, job.job_id).status == training_jobs.COMPLETED
    assert collect_training(ctx) == [] and versions(ctx) == {k: [1] for k in ids}
    assert active(ctx) == {k: 1 for k in ids}


def test_a_failed_azure_ml_training_job_fails_its_chunks_with_azure_mls_words(training_ctx):
    from shared.training import jobs as training_jobs
    from shared.training.service import collect_training, retrain_due
    from tests.test_retraining import HOUR, T0, active, ingest

    ctx, fake = training_ctx
    ingest(hours=4, devices=1)
    report = retrain_due(ctx, T0 + 4 * HOUR)
    fake.status = "Failed"
    [outcome] = collect_training(ctx)
    job = training_jobs.get_job(ctx.engine, report.job_id)
    assert job.status == training_jobs.FAILED and "Failed" in job.error
    assert outcome.reason == job.error and active(ctx) == {}
    # Its sensors are due again: the next call submits a new attempt.
    fake.status = "Running"
    again = retrain_due(ctx, T0 + 4 * HOUR)
    assert again.job_id.endswith("-2") and len(fake.sent) == 2
