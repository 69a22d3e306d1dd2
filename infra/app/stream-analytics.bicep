// Stream Analytics: the primary ingestion path, Event Hubs -> Azure SQL, as in the reference
// architecture. It averages each device/sensor over 5-second tumbling windows and writes one row
// per window into dbo.readings (device nvarchar(64), sensor nvarchar(64), ts datetime2,
// value float). `ts` is System.Timestamp(), i.e. the END of the 5-second window.
//
// Both sides authenticate with the job's system-assigned identity: Azure Event Hubs Data Receiver
// on the namespace (rbac.bicep), and a contained database user created with T-SQL after
// provisioning (infra/README.md). The job is created stopped; start it once the `readings` table
// exists (after the Alembic migration), otherwise the output fails to validate.

param name string
param location string = resourceGroup().location
param tags object = {}

param eventHubNamespaceName string
param eventHubName string = 'readings'
param consumerGroupName string = 'asa'

param sqlServerName string
param sqlDatabaseName string
param sqlTable string = 'dbo.readings'

@description('Streaming units. 3 is valid both as 3 classic SUs and as 1/3 of an SU V2.')
param streamingUnits int = 3

// The query below names these two literally (multi-line strings do not interpolate): keep in step.
var inputName = 'readings'
var outputName = 'sqlreadings'

resource job 'Microsoft.StreamAnalytics/streamingjobs@2021-10-01-preview' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    sku: {
      name: 'Standard'
    }
    jobType: 'Cloud'
    compatibilityLevel: '1.2'
    dataLocale: 'en-US'
    contentStoragePolicy: 'SystemAccount'
    // Sensors' clocks drift and partitions interleave: reorder within 5 s, accept 10 s late.
    eventsOutOfOrderPolicy: 'Adjust'
    eventsOutOfOrderMaxDelayInSeconds: 5
    eventsLateArrivalMaxDelayInSeconds: 10
    // A malformed row (e.g. a device id longer than 64 characters) is dropped and reported in the
    // job's diagnostics rather than stalling the whole stream.
    outputErrorPolicy: 'Drop'
    outputStartMode: 'JobStartTime'
    inputs: [
      {
        name: inputName
        properties: {
          type: 'Stream'
          datasource: {
            type: 'Microsoft.EventHub/EventHub'
            properties: {
              serviceBusNamespace: eventHubNamespaceName
              eventHubName: eventHubName
              consumerGroupName: consumerGroupName
              authenticationMode: 'Msi'
            }
          }
          serialization: {
            type: 'Json'
            properties: {
              encoding: 'UTF8'
            }
          }
        }
      }
    ]
    outputs: [
      {
        name: outputName
        properties: {
          datasource: {
            type: 'Microsoft.Sql/Server/Database'
            properties: {
              server: sqlServerName
              database: sqlDatabaseName
              table: sqlTable
              authenticationMode: 'Msi'
              maxWriterCount: 1
              maxBatchCount: 10000
            }
          }
        }
      }
    ]
    transformation: {
      name: 'average-5s'
      properties: {
        streamingUnits: streamingUnits
        query: '''
SELECT
    [device],
    [sensor],
    System.Timestamp() AS [ts],
    AVG([value]) AS [value]
INTO
    [sqlreadings]
FROM
    [readings] TIMESTAMP BY [ts]
GROUP BY
    [device],
    [sensor],
    TumblingWindow(second, 5)
'''
      }
    }
  }
}

output id string = job.id
output name string = job.name
output principalId string = job.identity.principalId
