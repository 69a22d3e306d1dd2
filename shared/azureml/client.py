"""Connecting to the Azure ML workspace, and which identity jobs and the cluster run as.

``azure.ai.ml`` is imported inside the functions only: importing it takes over a second, and
``function_app`` (every cold start) must not pay for it unless ``EXECUTOR=azureml`` is used.

Identity
--------
The Function App and the compute cluster share one user-assigned managed identity
(``infra/app/identity.bicep``). Its client id reaches the app as ``AZURE_CLIENT_ID``, the variable
``DefaultAzureCredential`` reads, so the same setting picks the identity for the SDK's calls and
for the jobs:

* ``AZURE_CLIENT_ID`` set: jobs run with ``ManagedIdentityConfiguration(client_id=...)``. The
  cluster nodes act as that identity, which holds Storage Blob Data Owner on the product
  containers, so the credential-less datastores work without keys, and a job's data access does
  not depend on who (or what) submitted it.
* not set (a developer's ``az login`` on this machine): ``UserIdentityConfiguration``, so the job
  reads and writes the datastores as the submitting user, who needs blob data access on the
  account (``rbac.bicep`` grants it to the deploying principal).

The cluster itself is given the identity by its ARM resource id (a client id is not enough to
attach one), read from ``AZUREML_IDENTITY_RESOURCE_ID``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.settings import Settings

if TYPE_CHECKING:  # pragma: no cover - typing only; never imported at run time here
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import ManagedIdentityConfiguration, UserIdentityConfiguration

CLIENT_ID_SETTING = "AZURE_CLIENT_ID"
IDENTITY_RESOURCE_ID_SETTING = "AZUREML_IDENTITY_RESOURCE_ID"


def compute_client_id(settings: Settings) -> str | None:
    """The user-assigned identity's client id (``AZURE_CLIENT_ID``), or None."""
    return settings.azure_client_id or None


def identity_resource_id(settings: Settings) -> str | None:
    """ARM resource id of the user-assigned identity the cluster runs as
    (``AZUREML_IDENTITY_RESOURCE_ID``), or None."""
    return settings.azureml.identity_resource_id.strip() or None


def job_identity(
    client_id: str | None,
) -> ManagedIdentityConfiguration | UserIdentityConfiguration:
    """The identity a scoring job runs as (see the module docstring for why)."""
    from azure.ai.ml.entities import ManagedIdentityConfiguration, UserIdentityConfiguration

    if client_id:
        return ManagedIdentityConfiguration(client_id=client_id)
    return UserIdentityConfiguration()


def ml_client(settings: Settings, credential: Any = None) -> MLClient:
    """An ``MLClient`` on the workspace named by the settings.

    Building it makes no network call; the first operation authenticates with
    ``DefaultAzureCredential`` (managed identity in Azure, ``az login`` here) unless a credential
    is given.
    """
    settings.azureml.require_workspace()
    from azure.ai.ml import MLClient

    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return MLClient(
        credential=credential,
        subscription_id=settings.azureml.subscription_id,
        resource_group_name=settings.azureml.resource_group,
        workspace_name=settings.azureml.workspace,
    )
