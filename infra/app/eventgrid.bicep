// Stage 1 of the Event Grid wiring: the system topic of the Function App's storage account. It is
// provisioned with everything else. The subscription that feeds the `record_predictions` blob
// trigger is stage 2 (predictions-subscription.bicep), deployed once the app code is running.

param name string
param location string = resourceGroup().location
param tags object = {}
param storageAccountId string

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: name
  location: location
  tags: tags
  properties: {
    source: storageAccountId
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output id string = systemTopic.id
output name string = systemTopic.name
