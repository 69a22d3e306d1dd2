"""Azure ML for the ``azureml`` executor: the workspace client, the job's code snapshot, the
run's pipeline job, and provisioning of the cluster and the scoring environment.

Modules: :mod:`~shared.azureml.client` (``MLClient`` and the identities),
:mod:`~shared.azureml.code` (staging ``scoring/`` as the job's code), :mod:`~shared.azureml.jobs`
(the pipeline job of a run, and of a training job), :mod:`~shared.azureml.provision` (cluster +
environment).
``python -m shared.azureml`` provisions, or dumps a run's pipeline job as YAML for inspection.

Nothing here imports ``azure.ai.ml`` at module level: the SDK takes over a second to import and
is loaded inside the functions that build or send Azure ML objects, so importing this package
(or ``function_app``) stays cheap.
"""

from __future__ import annotations

from shared.azureml.client import compute_client_id, identity_resource_id, job_identity, ml_client
from shared.azureml.code import stage_code, staged_code
from shared.azureml.jobs import (
    PipelinePlan,
    StepPlan,
    TrainingPipelinePlan,
    build_pipeline_job,
    build_training_pipeline_job,
    dump_pipeline_job,
    environment_reference,
    plan_pipeline,
    plan_training_pipeline,
)
from shared.azureml.provision import cluster_definition, environment_definition, provision

__all__ = [
    "PipelinePlan",
    "StepPlan",
    "TrainingPipelinePlan",
    "build_pipeline_job",
    "build_training_pipeline_job",
    "cluster_definition",
    "compute_client_id",
    "dump_pipeline_job",
    "environment_definition",
    "environment_reference",
    "identity_resource_id",
    "job_identity",
    "ml_client",
    "plan_pipeline",
    "plan_training_pipeline",
    "provision",
    "stage_code",
    "staged_code",
]
