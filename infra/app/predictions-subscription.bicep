// Stage 2 of the Event Grid wiring: the subscription that delivers BlobCreated events for
// completed prediction files to the Functions blob extension's webhook of `record_predictions`
// (a blob trigger with source=EventGrid, the only blob trigger kind Flex Consumption supports).
//
// Why a separate stage: the webhook URL carries the `blobs_extension` system key, which the host
// creates only once code with an Event Grid blob trigger is deployed and running, and Event Grid
// validates the endpoint when the subscription is created. So this module is deployed either
//   * by the azd `postdeploy` hook (infra/hooks/postdeploy.sh) right after `azd deploy`, or
//   * by `azd provision` with PREDICTIONS_SUBSCRIPTION_ENABLED=true (main.bicep includes this module),
//     once the code is deployed (for example after `func azure functionapp publish`).
// Both deploy this same file, under the same subscription name, so either is idempotent.

@description('Name of the Event Grid system topic of the Function App storage account (stage 1).')
param systemTopicName string

@description('Name of the Function App that hosts the blob trigger.')
param functionAppName string

@description('Name of the blob-triggered function (the Python function name).')
param functionName string = 'record_predictions'

@description('Name of the event subscription.')
param subscriptionName string = 'record-predictions'

@description('Container the scoring steps write prediction files to (PREDICTIONS_CONTAINER).')
param predictionsContainer string = 'predictions'

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

var blobsExtensionKey = listKeys('${functionApp.id}/host/default', '2024-04-01').systemKeys.blobs_extension

resource predictionsSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: systemTopic
  name: subscriptionName
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: 'https://${functionApp.properties.defaultHostName}/runtime/webhooks/blobs?functionName=Host.Functions.${functionName}&code=${blobsExtensionKey}'
        // One blob per delivery: the trigger handles one prediction file per invocation.
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      // Only final prediction files of runs: runs/<run id>/<chunk id>.predictions.parquet.
      subjectBeginsWith: '/blobServices/default/containers/${predictionsContainer}/blobs/runs/'
      subjectEndsWith: '.predictions.parquet'
      isSubjectCaseSensitive: false
    }
    // Event Grid retries for up to a day (while the app cold-starts or is being redeployed);
    // after that the event is dropped and its chunk stays unrecorded, so the run cannot complete
    // and ends by its timeout (RUN_TIMEOUT_MINUTES) rather than silently.
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}

output name string = predictionsSubscription.name
