// Every role assignment of the deployment, in one place.
//
// Shared user-assigned identity (Function App + Azure ML compute cluster):
//   * Storage Blob Data Owner        on the Function App storage account: the Functions host
//     (AzureWebJobsStorage: leases, timer and Event Hubs checkpoints, deployment package) and the
//     app/cluster (models, chunks, predictions, deadletters, reports) read and write blobs;
//   * Storage Queue Data Contributor on the same account: the blob trigger's poison queue, and
//     the run-request queue (the API sends, the queue trigger receives and deletes, the host
//     moves poisoned messages to `run-requests-poison`);
//   * Azure Event Hubs Data Receiver + Data Sender on the namespace;
//   * AzureML Data Scientist         on the workspace: submit and monitor pipeline jobs;
//   * Monitoring Metrics Publisher   on Application Insights (Entra-authenticated telemetry);
//   * Storage Blob Data Contributor  on the workspace's default storage account, and AcrPull on
//     its container registry: the cluster nodes fetch the code snapshot and the environment image.
// Stream Analytics job (system-assigned): Azure Event Hubs Data Receiver on the namespace.
// Azure ML workspace (system-assigned): Storage Blob Data Reader on the Function App storage
//   account, so the studio can preview the identity-based datastores.
// Deploying principal (optional): data-plane roles to run the project's CLI from a workstation
//   (train, run, azureml provision, simulate) against the deployed resources; `run` queues its
//   request like the API does (Storage Queue Data Contributor).

param storageAccountName string
param eventHubNamespaceName string
param applicationInsightsName string
param workspaceName string
param mlStorageAccountName string
param containerRegistryName string

param identityPrincipalId string
param streamAnalyticsPrincipalId string
param workspacePrincipalId string

@description('Object id of the deploying principal; empty: no assignments for it.')
param userPrincipalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param userPrincipalType string = 'User'

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  eventHubsDataReceiver: 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde'
  eventHubsDataSender: '2b629674-e913-4c01-ae53-ef4638d8f975'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  azureMLDataScientist: 'f6c7c914-8db3-469d-8ca1-694a8f32e121'
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource eventHubNamespace 'Microsoft.EventHub/namespaces@2024-01-01' existing = {
  name: eventHubNamespaceName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' existing = {
  name: workspaceName
}

resource mlStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: mlStorageAccountName
}

resource containerRegistry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: containerRegistryName
}

// ---- shared user-assigned identity -------------------------------------------------------------

resource identityBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityPrincipalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource identityQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityPrincipalId, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource identityEventHubsReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(eventHubNamespace.id, identityPrincipalId, roles.eventHubsDataReceiver)
  scope: eventHubNamespace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataReceiver)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource identityEventHubsSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(eventHubNamespace.id, identityPrincipalId, roles.eventHubsDataSender)
  scope: eventHubNamespace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataSender)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource identityDataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, identityPrincipalId, roles.azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.azureMLDataScientist)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource identityMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, identityPrincipalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource identityMlStorageContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(mlStorage.id, identityPrincipalId, roles.storageBlobDataContributor)
  scope: mlStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource identityAcrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(containerRegistry.id, identityPrincipalId, roles.acrPull)
  scope: containerRegistry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPull)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// ---- Stream Analytics job ----------------------------------------------------------------------

resource streamAnalyticsEventHubsReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(eventHubNamespace.id, streamAnalyticsPrincipalId, roles.eventHubsDataReceiver)
  scope: eventHubNamespace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataReceiver)
    principalId: streamAnalyticsPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// ---- Azure ML workspace ------------------------------------------------------------------------

resource workspaceBlobReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, workspacePrincipalId, roles.storageBlobDataReader)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: workspacePrincipalId
    principalType: 'ServicePrincipal'
  }
}

// ---- deploying principal (operator workstation) ------------------------------------------------

resource userBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(storage.id, userPrincipalId, roles.storageBlobDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}

resource userQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(storage.id, userPrincipalId, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}

resource userEventHubsSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(eventHubNamespace.id, userPrincipalId, roles.eventHubsDataSender)
  scope: eventHubNamespace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataSender)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}

resource userDataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(workspace.id, userPrincipalId, roles.azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.azureMLDataScientist)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}
