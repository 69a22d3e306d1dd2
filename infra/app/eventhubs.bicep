// Event Hubs namespace (Standard) with the `readings` hub that sensors send to.
// Two consumer groups read it independently:
//   * `asa`     - the Stream Analytics job (the primary ingestion path to SQL);
//   * `scoring` - the Function App's Event Hubs trigger (the fallback path; writes are idempotent).
// Local (SAS key) authentication is disabled: senders and receivers use Entra ID.

param name string
param location string = resourceGroup().location
param tags object = {}

param eventHubName string = 'readings'

@minValue(1)
@maxValue(32)
param partitionCount int = 4

@minValue(1)
@maxValue(7)
param messageRetentionInDays int = 1

param consumerGroupNames array = [
  'scoring'
  'asa'
]

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
    capacity: 1
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
    isAutoInflateEnabled: false
  }
}

resource hub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: eventHubName
  properties: {
    partitionCount: partitionCount
    messageRetentionInDays: messageRetentionInDays
  }
}

resource consumerGroups 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = [
  for consumerGroupName in consumerGroupNames: {
    parent: hub
    name: consumerGroupName
    properties: {}
  }
]

output id string = namespace.id
output name string = namespace.name
output eventHubName string = hub.name
output fullyQualifiedNamespace string = '${namespace.name}.servicebus.windows.net'
