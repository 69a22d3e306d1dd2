// The user-assigned managed identity shared by the Function App and the Azure ML compute cluster.
// One identity keeps the role assignments in one place (rbac.bicep) and lets the same
// DefaultAzureCredential (AZURE_CLIENT_ID) work in the Functions host and on the cluster nodes.

@description('Name of the user-assigned identity.')
param name string

param location string = resourceGroup().location
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
