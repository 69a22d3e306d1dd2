"""Provisioning the scoring cluster and environment from the app's settings.

``infra/`` creates the same cluster in Bicep at deployment; this module is for everything after:
changing ``AZUREML_MAX_NODES`` or ``AZUREML_IDLE_SECONDS`` without a redeployment, registering a
new scoring environment version, or a workspace that was not created by ``infra/``. It never
fights Bicep: the azd environment carries the cluster's ``AZUREML_*`` values as Bicep outputs,
and an existing cluster is sent only what differs from the settings (nothing when nothing
does), never a full definition that would replace its tags or VM priority.

Cost is the point of the cluster settings: **min 0 nodes** (nothing runs, nothing is billed
between runs), max nodes bounding the bill of one run (the executor never plans more steps than
nodes), and the idle time before scale-down (``AZUREML_IDLE_SECONDS``): long enough that runs
coming close together reuse warm nodes instead of paying each node's start-up again, short
enough that a lone run does not leave nodes idling. ``low_priority`` nodes cost a fraction of
dedicated ones and suit scoring, which a pre-empted run simply repeats.

The environment is registered **once** per name and version (``AZUREML_ENVIRONMENT``,
``AZUREML_ENVIRONMENT_VERSION``), from ``scoring/environment.yml`` on the base image
``AZUREML_BASE_IMAGE``; jobs reference it as ``azureml:<name>:<version>``, so submitting a run never
rebuilds an image. A registered version is immutable: after changing ``environment.yml``, raise
the version (provisioning reports a registered version whose definition differs).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from shared.azureml.client import identity_resource_id
from shared.azureml.client import ml_client as make_ml_client
from shared.azureml.code import scoring_source_dir
from shared.azureml.jobs import environment_reference
from shared.settings import Settings

if TYPE_CHECKING:  # pragma: no cover - typing only
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import AmlCompute, Environment, IdentityConfiguration

log = logging.getLogger(__name__)

CONDA_FILE = "environment.yml"


def cluster_definition(
    settings: Settings, *, identity_resource_id: str | None = None
) -> AmlCompute:
    """The ``AmlCompute`` cluster from ``AZUREML_*`` settings (min 0 nodes by default).

    ``identity_resource_id`` attaches the user-assigned identity the jobs run as; SSH is off
    (nobody needs to log in to a scoring node).
    """
    from azure.ai.ml.entities import AmlCompute, IdentityConfiguration, ManagedIdentityConfiguration

    aml = settings.azureml
    identity = None
    if identity_resource_id:
        identity = IdentityConfiguration(
            type="user_assigned",
            user_assigned_identities=[
                ManagedIdentityConfiguration(resource_id=identity_resource_id)
            ],
        )
    return AmlCompute(
        name=aml.compute,
        description="CPU cluster for the sensor scoring steps; scales to zero between runs",
        size=aml.vm_size,
        min_instances=aml.min_nodes,
        max_instances=aml.max_nodes,
        idle_time_before_scale_down=aml.idle_seconds,
        tier=aml.tier,
        identity=identity,
        ssh_public_access_enabled=False,
        tags={"app": "sensor-scoring"},
    )


def environment_definition(settings: Settings) -> Environment:
    """The scoring ``Environment``: ``scoring/environment.yml`` on the configured base image."""
    from azure.ai.ml.entities import Environment

    aml = settings.azureml
    return Environment(
        name=aml.environment,
        version=aml.environment_version,
        image=aml.base_image,
        conda_file=str(scoring_source_dir() / CONDA_FILE),
        description="Runtime of the scoring step (python -m scoring.score): numpy, pyarrow, "
        "scikit-learn; built from scoring/environment.yml",
        tags={"app": "sensor-scoring"},
    )


def _existing(get, *args, **kwargs) -> Any:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return get(*args, **kwargs)
    except ResourceNotFoundError:
        return None


def _environment_differs(registered: Any, wanted: Environment) -> bool:
    try:
        return registered.image != wanted.image or registered.conda_file != wanted.conda_file
    except AttributeError:  # pragma: no cover - an entity we cannot compare: assume the same
        return False


def provision(
    settings: Settings,
    ml_client: MLClient | None = None,
    *,
    wait: bool = True,
) -> dict[str, Any]:
    """Create or update the compute cluster and register the scoring environment.

    Parameters
    ----------
    settings : Settings
        The workspace coordinates and ``AZUREML_*`` cluster/environment settings.
    ml_client : MLClient, optional
        Default: :func:`shared.azureml.client.ml_client` (``DefaultAzureCredential``).
    wait : bool
        Wait for the cluster operation to finish (it takes seconds to a few minutes).

    Returns
    -------
    dict
        ``{"compute": {...}, "environment": {...}}``: what was done to each, with the values.

    Notes
    -----
    An existing cluster (the one ``azd provision`` created) is left alone when it already has
    the settings' values, and otherwise only its scale settings or identity are updated: see
    :func:`_reconcile_cluster`. Its compute action is ``created``, ``updated``, ``unchanged`` or
    ``differs`` (VM size or tier differ: Azure cannot change them in place, so nothing is sent
    and the report says what to do). Without an identity resource id, an existing cluster keeps
    the identity it has (an update must not detach the identity the jobs run as).
    """
    client = ml_client if ml_client is not None else make_ml_client(settings)
    resource_id = identity_resource_id(settings)

    existing_cluster = _existing(client.compute.get, settings.azureml.compute)
    wanted = cluster_definition(settings, identity_resource_id=resource_id)
    if existing_cluster is None:
        cluster, action, differences = wanted, "created", {}
        poller = client.compute.begin_create_or_update(cluster)
        if wait:
            poller.result()
    else:
        cluster, action, differences = _reconcile_cluster(client, existing_cluster, wanted, wait)
    compute_report = {
        "name": cluster.name,
        "action": action,
        "size": cluster.size,
        "tier": cluster.tier,
        "min_nodes": cluster.min_instances,
        "max_nodes": cluster.max_instances,
        "idle_seconds": _int_or_none(cluster.idle_time_before_scale_down),
        "identity": _identity_ids(cluster.identity),
    }
    if differences:
        compute_report["differences"] = differences
    if action == "differs":
        compute_report["message"] = (
            f"cluster {cluster.name} exists with "
            + ", ".join(f"{k}={v[0]!r}" for k, v in differences.items() if k in _FIXED)
            + " (settings want "
            + ", ".join(f"{k}={v[1]!r}" for k, v in differences.items() if k in _FIXED)
            + "); Azure cannot change these on an existing cluster, so it was left as it is: "
            "set AZUREML_VM_SIZE / AZUREML_TIER to what Bicep deployed (azd env get-values), or "
            "name a new cluster with AZUREML_COMPUTE"
        )
        log.warning(compute_report["message"])
    log.info("azureml cluster %s", compute_report["action"], extra={"compute": compute_report})

    environment = environment_definition(settings)
    registered = _existing(
        client.environments.get, name=environment.name, version=environment.version
    )
    env_report: dict[str, Any] = {
        "name": environment.name,
        "version": environment.version,
        "reference": environment_reference(settings),
        "image": environment.image,
    }
    if registered is None:
        client.environments.create_or_update(environment)
        env_report["action"] = "registered"
    elif _environment_differs(registered, environment):
        env_report["action"] = "stale"
        env_report["message"] = (
            f"environment {environment.name}:{environment.version} is registered with a "
            "different image or conda file; raise AZUREML_ENVIRONMENT_VERSION to register "
            "scoring/environment.yml as it is now"
        )
        log.warning(env_report["message"])
    else:
        env_report["action"] = "exists"
    log.info("azureml environment %s", env_report["action"], extra={"environment": env_report})
    return {"compute": compute_report, "environment": env_report}


# Fixed at creation: Azure rejects a change of VM size or priority on an existing cluster.
_FIXED = ("size", "tier")


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _cluster_differences(existing: AmlCompute, wanted: AmlCompute) -> dict[str, list]:
    """``field -> [existing, wanted]`` for what the settings want and the cluster lacks.

    Compared: VM size (Azure reports it in upper case) and tier, the scale settings, and the
    identity when one is configured. Description, tags, ``disableLocalAuth``, node public IP and
    the like are not settings of this app: whatever Bicep (or anyone) gave them is kept.
    """
    differences: dict[str, list] = {}
    if (existing.size or "").lower() != (wanted.size or "").lower():
        differences["size"] = [existing.size, wanted.size]
    if (existing.tier or "dedicated") != (wanted.tier or "dedicated"):
        differences["tier"] = [existing.tier, wanted.tier]
    for name, have, want in (
        ("min_nodes", existing.min_instances, wanted.min_instances),
        ("max_nodes", existing.max_instances, wanted.max_instances),
        (
            "idle_seconds",
            _int_or_none(existing.idle_time_before_scale_down),
            _int_or_none(wanted.idle_time_before_scale_down),
        ),
    ):
        if have != want:
            differences[name] = [have, want]
    wanted_ids = {i.lower() for i in _identity_ids(wanted.identity)}
    existing_ids = {i.lower() for i in _identity_ids(getattr(existing, "identity", None))}
    if wanted_ids - existing_ids:
        differences["identity"] = [sorted(existing_ids), sorted(wanted_ids)]
    return differences


def _reconcile_cluster(
    client: MLClient, existing: AmlCompute, wanted: AmlCompute, wait: bool
) -> tuple[AmlCompute, str, dict[str, list]]:
    """Bring an existing cluster to the settings, touching only what differs.

    Nothing differs: nothing is sent (``unchanged``). Only scale settings or the identity
    differ: the cluster *as it exists* is updated with those (``updated``), so its tags,
    description, priority and local-auth setting stay what Bicep made them. VM size or tier
    differ: nothing is sent (``differs``), since Azure cannot change them in place.
    """
    differences = _cluster_differences(existing, wanted)
    if not differences:
        return existing, "unchanged", {}
    if any(k in differences for k in _FIXED):
        return existing, "differs", differences
    existing.min_instances = wanted.min_instances
    existing.max_instances = wanted.max_instances
    existing.idle_time_before_scale_down = wanted.idle_time_before_scale_down
    if "identity" in differences:
        existing.identity = wanted.identity
    poller = client.compute.begin_update(existing)
    if wait:
        poller.result()
    return existing, "updated", differences


def _identity_ids(identity: IdentityConfiguration | None) -> list[str]:
    if identity is None:
        return []
    return [i.resource_id for i in (identity.user_assigned_identities or []) if i.resource_id]
