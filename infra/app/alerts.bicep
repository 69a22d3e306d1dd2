// Alerts (shared.alerts): an Event Grid custom topic that receives one CloudEvent 1.0 per state
// change of an anomaly event (types sensors.anomaly.opened / .updated / .closed, subject
// <device>/<sensor>), and the role that lets the Function App's identity publish to it.
// Local (key) auth is disabled: the app publishes with its managed identity only. Route the
// events with Event Grid subscriptions (Logic Apps for Teams or email, Storage queues, Service
// Bus, webhooks): see the README's "Alerts" section.

param name string
param location string = resourceGroup().location
param tags object = {}

@description('Principal id of the identity that publishes (the Function App\'s).')
param publisherPrincipalId string

// Built-in role "EventGrid Data Sender".
var eventGridDataSender = 'd5a91429-5739-47e2-a06b-3470a27159e7'

resource topic 'Microsoft.EventGrid/topics@2022-06-15' = {
  name: name
  location: location
  tags: tags
  properties: {
    inputSchema: 'CloudEventSchemaV1_0'
    publicNetworkAccess: 'Enabled'
    disableLocalAuth: true
  }
}

resource sender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(topic.id, publisherPrincipalId, eventGridDataSender)
  scope: topic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventGridDataSender)
    principalId: publisherPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output id string = topic.id
output name string = topic.name
output endpoint string = topic.properties.endpoint
