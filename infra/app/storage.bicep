// The Function App's storage account. It holds the Functions host state (AzureWebJobsStorage),
// the deployment package container, the product's containers (models, chunks, predictions,
// deadletters, reports) and the run-request queues. Shared-key access is disabled: every client (Functions host, app code,
// Azure ML cluster, operators' CLI) authenticates with Microsoft Entra ID.

param name string
param location string = resourceGroup().location
param tags object = {}

@description('Blob containers to create: the deployment package container and the product containers.')
param containerNames array

@description('Storage queues to create: the run-request queue and its poison queue.')
param queueNames array = []

@description('Days a deleted blob stays recoverable (soft delete).')
@minValue(1)
@maxValue(365)
param blobSoftDeleteDays int = 7

@description('Container of the runs\' feature chunks; its blobs are deleted by lifecycle management.')
param chunksContainerName string = 'chunks'

@description('Container of the scoring step\'s predictions files; its blobs are deleted by lifecycle management.')
param predictionsContainerName string = 'predictions'

@description('Container of the model sets; the training steps\' summaries under training/ are deleted by lifecycle management (model sets are kept: the registry keeps every version).')
param modelsContainerName string = 'models'

// Chunks are read once, by the run's scoring step (a re-run writes its own): a week covers a run
// retried or investigated; at 1M sensors an hourly run writes ~1.7 GB of chunks (docs/scale.md).
@description('Days after its last change a chunk blob is deleted.')
@minValue(1)
@maxValue(3650)
param chunksRetentionDays int = 7

// Predictions files are recorded in SQL as they land; the blobs are the evidence behind SQL's
// rows, kept as long as PREDICTIONS_RETENTION_DAYS keeps those rows (shared.retention).
@description('Days after its last change a predictions blob is deleted; keep equal to PREDICTIONS_RETENTION_DAYS.')
@minValue(1)
@maxValue(3650)
param predictionsRetentionDays int = 90

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    dnsEndpointType: 'Standard'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      // Event Grid, Azure ML and the Flex Consumption platform reach the account over public
      // endpoints; identity (RBAC) is the access boundary, not the network.
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: blobSoftDeleteDays
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for containerName in containerNames: {
    parent: blobService
    name: containerName
    properties: {
      publicAccess: 'None'
    }
  }
]

// Lifecycle management deletes old run files server-side (no app code, no listing by the app).
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'delete-old-chunks'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [ 'blockBlob' ]
              prefixMatch: [ '${chunksContainerName}/' ]
            }
            actions: {
              baseBlob: {
                delete: { daysAfterModificationGreaterThan: chunksRetentionDays }
              }
            }
          }
        }
        {
          // Training summaries (training/<job>/<chunk>.training.json) are read once, when the
          // job's chunks are registered; kept as long as the training chunks they came from.
          name: 'delete-old-training-summaries'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [ 'blockBlob' ]
              prefixMatch: [ '${modelsContainerName}/training/' ]
            }
            actions: {
              baseBlob: {
                delete: { daysAfterModificationGreaterThan: chunksRetentionDays }
              }
            }
          }
        }
        {
          name: 'delete-old-predictions'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [ 'blockBlob' ]
              prefixMatch: [ '${predictionsContainerName}/' ]
            }
            actions: {
              baseBlob: {
                delete: { daysAfterModificationGreaterThan: predictionsRetentionDays }
              }
            }
          }
        }
      ]
    }
  }
  dependsOn: [ containers ]
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [
  for queueName in queueNames: {
    parent: queueService
    name: queueName
  }
]

output id string = storage.id
output name string = storage.name
output primaryBlobEndpoint string = storage.properties.primaryEndpoints.blob
