// Infrastructure of the sensor batch-scoring platform (azd project; see infra/README.md).
//
// Subscription scope, as in the Azure Functions azd quickstarts: creates the resource group and
// deploys every module into it. All names derive from `environmentName` plus a token unique to
// subscription + environment + location, and every resource carries the `azd-env-name` tag.
//
//   identity          user-assigned identity shared by the Function App and the compute cluster
//   monitoring        Log Analytics + Application Insights
//   storage           Function App storage (no shared key): deployment package + product containers
//                     + the run-request queue and its poison queue
//   eventhubs         namespace + `readings` hub + consumer groups `scoring` and `asa`
//   sql               Entra-only logical server + serverless General Purpose database
//   azureml           workspace (+ Key Vault, storage, registry), `cpu-cluster`, datastores
//   function-app      Flex Consumption plan + Function App + ALL its app settings
//   stream-analytics  Event Hubs -> SQL, 5-second tumbling-window averages
//   rbac              every role assignment
//   eventgrid         system topic of the Function App storage account (stage 1)
//   predictions-subscription  Event Grid -> `record_predictions` webhook (stage 2, optional here)

targetScope = 'subscription'

// ---- environment -------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('Name of the azd environment: used in resource names and the azd-env-name tag.')
param environmentName string

@minLength(1)
@description('Region of every resource. It must offer Flex Consumption, Azure Machine Learning and Stream Analytics.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group name; empty: rg-<environmentName>.')
param resourceGroupName string = ''

@description('Object id of the principal running azd (azd sets AZURE_PRINCIPAL_ID). It gets data-plane roles to run the project CLI against the deployment, and is the default SQL administrator.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
])
@description('Kind of principalId: User for a person, ServicePrincipal for a CI identity.')
param principalType string = 'User'

// ---- Azure SQL ---------------------------------------------------------------------------------

@description('Object id of the Microsoft Entra SQL administrator; empty: principalId.')
param sqlAdminObjectId string = ''

@description('Display name of the SQL administrator (user principal name or group name).')
param sqlAdminLogin string = 'sql-entra-admin'

@allowed([
  'User'
  'Group'
  'Application'
])
param sqlAdminPrincipalType string = 'User'

@description('Name of the database (SQL_DATABASE).')
param sqlDatabaseName string = 'scoring'

@description('Maximum vCores of the serverless database.')
param sqlMaxVCores int = 1

@description('Minutes without connections before the serverless database pauses.')
param sqlAutoPauseDelayMinutes int = 60

@description('Optional public IP of an operator workstation to allow through the SQL firewall.')
param clientIpAddress string = ''

// ---- Function App ------------------------------------------------------------------------------

@description('Upper bound of Flex Consumption instances of the Function App (Flex Consumption accepts 40 to 1000).')
@minValue(40)
@maxValue(1000)
param functionMaximumInstanceCount int = 100

@allowed([
  512
  2048
  4096
])
param functionInstanceMemoryMB int = 2048

// ---- Event Hubs --------------------------------------------------------------------------------

@description('Partitions of the `readings` hub (fixed once created on the Standard tier).')
@minValue(1)
@maxValue(32)
param eventHubPartitionCount int = 4

// ---- Azure ML compute cluster ------------------------------------------------------------------

@description('VM size of the `cpu-cluster` nodes.')
param computeVmSize string = 'Standard_D2as_v4'

@allowed([
  'Dedicated'
  'LowPriority'
])
param computeVmPriority string = 'Dedicated'

@description('Minimum nodes. 0: the cluster costs nothing between runs. 1: a warm node, worth it when runs come minutes apart.')
@minValue(0)
param computeMinNodes int = 0

@minValue(1)
param computeMaxNodes int = 4

@description('Seconds an idle node waits before scale-down (300 = PT5M).')
@minValue(0)
param computeIdleSeconds int = 300

// ---- Stream Analytics --------------------------------------------------------------------------

@description('Streaming units of the Stream Analytics job.')
param streamAnalyticsStreamingUnits int = 3

// ---- Event Grid stage 2 ------------------------------------------------------------------------

@description('Deploy the Event Grid subscription to `record_predictions` from here. Only true once the app code is deployed (the webhook key exists only then); the azd postdeploy hook does the same without it.')
param predictionsSubscriptionEnabled bool = false

// ---- Alerts ------------------------------------------------------------------------------------

@description('HTTPS webhooks that receive signed alert notifications, comma-separated (optional; the Event Grid topic is always there).')
param alertsWebhookUrls string = ''

@secure()
@description('HMAC-SHA256 key the webhook bodies are signed with (at least 16 characters; required with alertsWebhookUrls).')
param alertsWebhookSecret string = ''

@allowed([
  'cloudevents'
  'teams'
])
param alertsWebhookFormat string = 'cloudevents'

// ---- names -------------------------------------------------------------------------------------

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}

var names = {
  resourceGroup: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  identity: 'id-func-${resourceToken}'
  logAnalytics: 'log-${resourceToken}'
  applicationInsights: 'appi-${resourceToken}'
  storage: 'st${resourceToken}'
  eventHubNamespace: 'evhns-${resourceToken}'
  sqlServer: 'sql-${resourceToken}'
  workspace: 'mlw-${resourceToken}'
  keyVault: 'kv-${resourceToken}'
  mlStorage: 'stml${resourceToken}'
  containerRegistry: 'cr${resourceToken}'
  plan: 'plan-${resourceToken}'
  functionApp: 'func-${resourceToken}'
  streamAnalytics: 'asa-${resourceToken}'
  systemTopic: 'evgt-${resourceToken}'
  alertsTopic: 'evgt-alerts-${resourceToken}'
}

// Flex Consumption deploys the app package from this container (functionAppConfig.deployment).
var deploymentContainerName = 'app-package-${take(names.functionApp, 32)}-${take(resourceToken, 7)}'
var productContainers = [
  'models'
  'chunks'
  'predictions'
  'deadletters'
  'reports'
]
var computeName = 'cpu-cluster'
// POST /api/runs queues run requests here; the queue trigger prepares them. The Functions host
// moves a message that failed maxDequeueCount times to `<queue>-poison` (a second trigger).
var runsQueue = 'run-requests'

// ---- resources ---------------------------------------------------------------------------------

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: names.resourceGroup
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: names.identity
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: names.logAnalytics
    applicationInsightsName: names.applicationInsights
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: names.storage
    location: location
    tags: tags
    containerNames: concat([deploymentContainerName], productContainers)
    queueNames: [
      runsQueue
      '${runsQueue}-poison'
    ]
  }
}

module eventHubs 'app/eventhubs.bicep' = {
  name: 'eventhubs'
  scope: rg
  params: {
    name: names.eventHubNamespace
    location: location
    tags: tags
    eventHubName: 'readings'
    partitionCount: eventHubPartitionCount
    consumerGroupNames: [
      'scoring'
      'asa'
    ]
  }
}

module sql 'app/sql.bicep' = {
  name: 'sql'
  scope: rg
  params: {
    serverName: names.sqlServer
    databaseName: sqlDatabaseName
    location: location
    tags: tags
    administratorObjectId: !empty(sqlAdminObjectId) ? sqlAdminObjectId : principalId
    administratorLogin: sqlAdminLogin
    administratorPrincipalType: sqlAdminPrincipalType
    maxVCores: sqlMaxVCores
    autoPauseDelayMinutes: sqlAutoPauseDelayMinutes
    clientIpAddress: clientIpAddress
  }
}

module azureml 'app/azureml.bicep' = {
  name: 'azureml'
  scope: rg
  params: {
    workspaceName: names.workspace
    location: location
    tags: tags
    keyVaultName: names.keyVault
    storageAccountName: names.mlStorage
    containerRegistryName: names.containerRegistry
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    computeIdentityId: identity.outputs.id
    computeName: computeName
    computeVmSize: computeVmSize
    computeVmPriority: computeVmPriority
    computeMinNodes: computeMinNodes
    computeMaxNodes: computeMaxNodes
    computeIdleSeconds: computeIdleSeconds
    dataStorageAccountName: storage.outputs.name
    datastores: {
      chunks: 'chunks'
      models: 'models'
      predictions: 'predictions'
    }
  }
}

// The alerts topic (CloudEvents 1.0) and EventGrid Data Sender for the app's identity.
module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    name: names.alertsTopic
    location: location
    tags: tags
    publisherPrincipalId: identity.outputs.principalId
  }
}

module functionApp 'app/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    name: names.functionApp
    planName: names.plan
    location: location
    tags: tags
    serviceTags: {
      'azd-service-name': 'api'
    }
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    runsQueueName: runsQueue
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    eventHubFullyQualifiedNamespace: eventHubs.outputs.fullyQualifiedNamespace
    eventHubName: eventHubs.outputs.eventHubName
    eventHubConsumerGroup: 'scoring'
    sqlServerFqdn: sql.outputs.serverFqdn
    sqlDatabaseName: sql.outputs.databaseName
    azureMLWorkspaceName: azureml.outputs.workspaceName
    azureMLComputeName: azureml.outputs.computeName
    azureMLVmSize: computeVmSize
    azureMLVmPriority: computeVmPriority
    azureMLMinNodes: computeMinNodes
    azureMLMaxNodes: computeMaxNodes
    azureMLIdleSeconds: computeIdleSeconds
    maximumInstanceCount: functionMaximumInstanceCount
    instanceMemoryMB: functionInstanceMemoryMB
    alertsTopicEndpoint: alerts.outputs.endpoint
    alertsWebhookUrls: alertsWebhookUrls
    alertsWebhookSecret: alertsWebhookSecret
    alertsWebhookFormat: alertsWebhookFormat
  }
}

module streamAnalytics 'app/stream-analytics.bicep' = {
  name: 'stream-analytics'
  scope: rg
  params: {
    name: names.streamAnalytics
    location: location
    tags: tags
    eventHubNamespaceName: eventHubs.outputs.name
    eventHubName: eventHubs.outputs.eventHubName
    consumerGroupName: 'asa'
    sqlServerName: sql.outputs.serverName
    sqlDatabaseName: sql.outputs.databaseName
    sqlTable: 'dbo.readings'
    streamingUnits: streamAnalyticsStreamingUnits
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    eventHubNamespaceName: eventHubs.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    workspaceName: azureml.outputs.workspaceName
    mlStorageAccountName: azureml.outputs.storageAccountName
    containerRegistryName: azureml.outputs.containerRegistryName
    identityPrincipalId: identity.outputs.principalId
    streamAnalyticsPrincipalId: streamAnalytics.outputs.principalId
    workspacePrincipalId: azureml.outputs.workspacePrincipalId
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

module eventGrid 'app/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: rg
  params: {
    name: names.systemTopic
    location: location
    tags: tags
    storageAccountId: storage.outputs.id
  }
}

module predictionsSubscription 'app/predictions-subscription.bicep' = if (predictionsSubscriptionEnabled) {
  name: 'predictions-subscription'
  scope: rg
  params: {
    systemTopicName: eventGrid.outputs.name
    functionAppName: functionApp.outputs.name
    functionName: 'record_predictions'
    predictionsContainer: 'predictions'
  }
  dependsOn: [
    rbac
  ]
}

// ---- outputs (azd stores them in .azure/<env>/.env; the hooks and README use them) -------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_SUBSCRIPTION_ID string = subscription().subscriptionId
output AZURE_RESOURCE_GROUP string = rg.name

output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output SERVICE_API_NAME string = functionApp.outputs.name
output SERVICE_API_URI string = functionApp.outputs.uri

output AZURE_IDENTITY_NAME string = identity.outputs.name
output AZURE_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId

output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_STORAGE_BLOB_ENDPOINT string = storage.outputs.primaryBlobEndpoint
output EVENTGRID_SYSTEM_TOPIC_NAME string = eventGrid.outputs.name

// Identity-based connections for running the project CLI from a workstation against Azure
// (`azd env get-values`, see README); the signed-in az identity is used, not the app's identity.
output ScoringStorage__accountName string = storage.outputs.name
output RUNS_QUEUE string = runsQueue
output EventHubConnection__fullyQualifiedNamespace string = eventHubs.outputs.fullyQualifiedNamespace

output EVENTHUB_NAMESPACE string = eventHubs.outputs.name
output EVENTHUB_FULLY_QUALIFIED_NAMESPACE string = eventHubs.outputs.fullyQualifiedNamespace
output EVENTHUB_NAME string = eventHubs.outputs.eventHubName

output SQL_SERVER string = sql.outputs.serverFqdn
output SQL_SERVER_NAME string = sql.outputs.serverName
output SQL_DATABASE string = sql.outputs.databaseName

output AZUREML_SUBSCRIPTION_ID string = subscription().subscriptionId
output AZUREML_RESOURCE_GROUP string = rg.name
output AZUREML_WORKSPACE string = azureml.outputs.workspaceName
output AZUREML_COMPUTE string = azureml.outputs.computeName
// The cluster as Bicep made it, in the app's own setting names (the Function App gets the same
// values): `azureml provision` run later with `azd env get-values` loaded agrees with Bicep.
output AZUREML_VM_SIZE string = computeVmSize
output AZUREML_TIER string = computeVmPriority == 'LowPriority' ? 'low_priority' : 'dedicated'
output AZUREML_MIN_NODES string = string(computeMinNodes)
output AZUREML_MAX_NODES string = string(computeMaxNodes)
output AZUREML_IDLE_SECONDS string = string(computeIdleSeconds)
output AZUREML_IDENTITY_RESOURCE_ID string = identity.outputs.id

output STREAM_ANALYTICS_JOB_NAME string = streamAnalytics.outputs.name

output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
