// Azure Machine Learning: the workspace with its own dependencies (Key Vault, default storage
// account, container registry; Application Insights is shared with the Function App), the CPU
// compute cluster that runs the scoring steps, and three identity-based datastores that point at
// the Function App's storage account, so the pipeline steps read chunks and models from, and write
// predictions to, exactly the containers the Functions app writes and watches.
//
// The cluster scales to zero (minNodeCount 0 by default): between runs it costs nothing. It runs as
// the shared user-assigned identity, which holds blob read/write on the product containers.

param workspaceName string
param location string = resourceGroup().location
param tags object = {}

param keyVaultName string
param storageAccountName string
param containerRegistryName string
param applicationInsightsId string

@description('Resource id of the user-assigned identity the compute cluster runs as.')
param computeIdentityId string

@description('Name of the compute cluster (AZUREML_COMPUTE).')
param computeName string = 'cpu-cluster'

@description('VM size of the cluster nodes.')
param computeVmSize string = 'Standard_D2as_v4'

@allowed([
  'Dedicated'
  'LowPriority'
])
param computeVmPriority string = 'Dedicated'

@minValue(0)
param computeMinNodes int = 0

@minValue(1)
param computeMaxNodes int = 4

@description('Seconds an idle node waits before the cluster scales it down.')
@minValue(0)
param computeIdleSeconds int = 300

@description('The Function App storage account that holds the product containers.')
param dataStorageAccountName string

@description('Datastore name -> blob container name, in the data storage account.')
param datastores object = {
  chunks: 'chunks'
  models: 'models'
  predictions: 'predictions'
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    // Access-policy mode, empty: the workspace adds the policy for its own identity when it is
    // created. Nothing of this project is stored here (no connection strings, no keys).
    enableRbacAuthorization: false
    accessPolicies: []
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    publicNetworkAccess: 'Enabled'
  }
}

// The workspace's default storage (code snapshots, job logs and outputs of the workspace itself).
// Kept apart from the Function App's account: Azure ML's system datastores use account keys by
// default, while the Function App's account allows no shared-key access at all.
resource mlStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
  }
}

// An explicit registry (admin user disabled) for the scoring environment's image; the cluster's
// identity pulls from it (AcrPull, rbac.bicep).
resource containerRegistry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: containerRegistryName
  location: location
  tags: tags
  sku: {
    name: 'Basic'
  }
  properties: {
    adminUserEnabled: false
  }
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' = {
  name: workspaceName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  sku: {
    name: 'Basic'
    tier: 'Basic'
  }
  properties: {
    friendlyName: workspaceName
    description: 'Batch scoring of per-sensor anomaly-detection models'
    keyVault: keyVault.id
    storageAccount: mlStorage.id
    containerRegistry: containerRegistry.id
    applicationInsights: applicationInsightsId
    publicNetworkAccess: 'Enabled'
    v1LegacyMode: false
  }
}

resource compute 'Microsoft.MachineLearningServices/workspaces/computes@2024-04-01' = {
  parent: workspace
  name: computeName
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${computeIdentityId}': {}
    }
  }
  properties: {
    computeType: 'AmlCompute'
    description: 'CPU cluster for the scoring steps; scales to zero between runs'
    disableLocalAuth: true
    properties: {
      vmSize: computeVmSize
      vmPriority: computeVmPriority
      osType: 'Linux'
      remoteLoginPortPublicAccess: 'Disabled'
      enableNodePublicIp: true
      scaleSettings: {
        minNodeCount: computeMinNodes
        maxNodeCount: computeMaxNodes
        nodeIdleTimeBeforeScaleDown: 'PT${computeIdleSeconds}S'
      }
    }
  }
}

// Identity-based (credential-less) datastores: a job reads and writes them as the identity it runs
// under; the studio previews them as the workspace identity (Storage Blob Data Reader, rbac.bicep).
resource blobDatastores 'Microsoft.MachineLearningServices/workspaces/datastores@2024-04-01' = [
  for datastore in items(datastores): {
    parent: workspace
    name: datastore.key
    properties: {
      datastoreType: 'AzureBlob'
      description: 'Container ${datastore.value} of the Function App storage account (identity-based access)'
      accountName: dataStorageAccountName
      containerName: datastore.value
      endpoint: environment().suffixes.storage
      protocol: 'https'
      credentials: {
        credentialsType: 'None'
      }
      serviceDataAccessAuthIdentity: 'WorkspaceSystemAssignedIdentity'
    }
  }
]

output workspaceId string = workspace.id
output workspaceName string = workspace.name
output workspacePrincipalId string = workspace.identity.principalId
output computeName string = compute.name
output storageAccountId string = mlStorage.id
output storageAccountName string = mlStorage.name
output containerRegistryId string = containerRegistry.id
output containerRegistryName string = containerRegistry.name
output keyVaultName string = keyVault.name
