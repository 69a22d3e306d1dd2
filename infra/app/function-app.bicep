// The Function App on the Flex Consumption plan (FC1), Python 3.11, running as the shared
// user-assigned identity. Every connection is identity-based (`__credential: managedidentity` +
// `__clientId`); no key or connection string is stored anywhere.
//
// ALL app settings live in the single `appSettings` object below, one `NAME: value` per line.
// tests/ parse it and compare the names with the settings the code reads (shared/settings.py) and
// with local.settings.example.json: add or rename a setting in all three places at once.
// FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION are deliberately absent: Flex
// Consumption rejects them (the runtime is functionAppConfig.runtime). DATA_DIR and SQL_URL are
// local-only settings and are not set here.

param name string
param planName string
param location string = resourceGroup().location
param tags object = {}

@description('Tags for the site only (azd finds the service by `azd-service-name`).')
param serviceTags object = {}

param storageAccountName string
param deploymentContainerName string

@description('Storage queue of on-demand run requests (its poison queue is <name>-poison).')
param runsQueueName string = 'run-requests'

param identityId string
param identityClientId string

param applicationInsightsName string

param eventHubFullyQualifiedNamespace string
param eventHubName string = 'readings'
param eventHubConsumerGroup string = 'scoring'

param sqlServerFqdn string
param sqlDatabaseName string

param azureMLWorkspaceName string
param azureMLComputeName string = 'cpu-cluster'
param azureMLVmSize string = 'Standard_D2as_v4'
param azureMLMinNodes int = 0
param azureMLMaxNodes int = 4
param azureMLIdleSeconds int = 300

@allowed([
  'Dedicated'
  'LowPriority'
])
param azureMLVmPriority string = 'Dedicated'

@description('Upper bound of Flex Consumption instances (the plan accepts 40 to 1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Endpoint of the Event Grid custom topic alerts are published to (alerts.bicep).')
param alertsTopicEndpoint string = ''
@description('HTTPS webhooks for signed alerts, comma-separated (optional).')
param alertsWebhookUrls string = ''
@secure()
param alertsWebhookSecret string = ''
param alertsWebhookFormat string = 'cloudevents'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

var appSettings = {
  AzureWebJobsStorage__accountName: storage.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  ScoringStorage__accountName: storage.name
  // The run-request queue trigger and the app's queue client (same account, same identity).
  ScoringStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
  ScoringStorage__credential: 'managedidentity'
  ScoringStorage__clientId: identityClientId
  EventHubConnection__fullyQualifiedNamespace: eventHubFullyQualifiedNamespace
  EventHubConnection__credential: 'managedidentity'
  EventHubConnection__clientId: identityClientId
  EVENTHUB_NAME: eventHubName
  EVENTHUB_CONSUMER_GROUP: eventHubConsumerGroup
  SQL_SERVER: sqlServerFqdn
  SQL_DATABASE: sqlDatabaseName
  // Transient SQL errors (a serverless database resuming from auto-pause) are retried this long.
  SQL_RETRY_SECONDS: '90'
  MODELS_CONTAINER: 'models'
  CHUNKS_CONTAINER: 'chunks'
  PREDICTIONS_CONTAINER: 'predictions'
  DEADLETTER_CONTAINER: 'deadletters'
  REPORTS_CONTAINER: 'reports'
  RUNS_QUEUE: runsQueueName
  SCORING_SCHEDULE: '0 0 * * * *'
  CATCHUP_MAX_WINDOWS: '3'
  MAX_WINDOW_HOURS: '24'
  BUCKET_SECONDS: '60'
  SENSORS_PER_CHUNK: '1000'
  EXECUTOR: 'azureml'
  LOCAL_WORKERS: '2'
  RUN_TIMEOUT_MINUTES: '120'
  RECONCILE_INTERVAL_SECONDS: '60'
  // Retraining over the trailing TRAIN_WINDOW_HOURS (14 days: daily and weekly seasonality).
  TRAINING_SCHEDULE: '0 30 0 * * *'
  TRAIN_WINDOW_HOURS: '336'
  MIN_TRAINING_BUCKETS: '30'
  // Retention (shared.retention): readings and bucket aggregates, then predictions and anomaly
  // events, deleted by the scoring timer in bounded batches; readings must cover the training window.
  READINGS_RETENTION_DAYS: '30'
  PREDICTIONS_RETENTION_DAYS: '90'
  TARGET_FALSE_ALARM_RATE: '0.001'
  SENSITIVITY: '0.5'
  // An anomaly event (one alarm) ends after this many buckets of its sensor without a flag.
  EVENT_GAP_BUCKETS: '300'
  EVENT_REST_BUCKETS: '300'
  // Alerts (shared.alerts): the Event Grid topic (identity-based), optional signed webhooks, and
  // the app's URL for the report links in each notification.
  ALERTS_EVENTGRID_ENDPOINT: alertsTopicEndpoint
  ALERTS_WEBHOOK_URLS: alertsWebhookUrls
  ALERTS_WEBHOOK_SECRET: alertsWebhookSecret
  ALERTS_WEBHOOK_FORMAT: alertsWebhookFormat
  ALERTS_BASE_URL: 'https://${functionApp.properties.defaultHostName}'
  LOG_LEVEL: 'INFO'
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  AZURE_CLIENT_ID: identityClientId
  AZUREML_SUBSCRIPTION_ID: subscription().subscriptionId
  AZUREML_RESOURCE_GROUP: resourceGroup().name
  AZUREML_WORKSPACE: azureMLWorkspaceName
  AZUREML_COMPUTE: azureMLComputeName
  AZUREML_VM_SIZE: azureMLVmSize
  AZUREML_MIN_NODES: string(azureMLMinNodes)
  AZUREML_MAX_NODES: string(azureMLMaxNodes)
  AZUREML_IDLE_SECONDS: string(azureMLIdleSeconds)
  AZUREML_TIER: azureMLVmPriority == 'LowPriority' ? 'low_priority' : 'dedicated'
  AZUREML_MAX_STEPS: '4'
  AZUREML_EXPERIMENT: 'sensor-scoring'
  AZUREML_ENVIRONMENT: 'sensor-scoring'
  AZUREML_ENVIRONMENT_VERSION: '1'
  AZUREML_BASE_IMAGE: 'mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest'
  AZUREML_CHUNKS_DATASTORE: 'chunks'
  AZUREML_MODELS_DATASTORE: 'models'
  AZUREML_PREDICTIONS_DATASTORE: 'predictions'
  AZUREML_IDENTITY_RESOURCE_ID: identityId
  // Stream Analytics is the primary ingestion path (Event Hubs -> SQL). The Event Hubs-triggered
  // function is its fallback and writes the same table: enable it (set 'false') only while the
  // Stream Analytics job is stopped, or both would store every reading.
  'AzureWebJobs.ingest_readings.Disabled': 'true'
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, serviceTags)
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }

  resource settings 'config' = {
    name: 'appsettings'
    properties: appSettings
  }
}

output id string = functionApp.id
output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
output uri string = 'https://${functionApp.properties.defaultHostName}'
