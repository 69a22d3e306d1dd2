// Stream Analytics: the primary ingestion path, Event Hubs -> Azure SQL, as in the reference
// architecture. One job, two outputs:
//   * a tumbling-window aggregate per device/sensor over BUCKET_SECONDS into dbo.bucket_aggregates
//     (bucket_seconds, bucket_start, device, sensor, count, sum, min, max, sum_sq): the rows runs
//     and training read, one per sensor and bucket (shared.aggregates);
//   * the raw readings into dbo.readings, kept for audit, for rebuilding the aggregates when
//     BUCKET_SECONDS changes (`aggregates rebuild`), and for the edge buckets of on-demand windows
//     not aligned to buckets (grouped from readings, see shared.features).
// bucket_start is the window's start (System.Timestamp() is its end). A window is emitted once,
// when event time passes its end plus the out-of-order tolerance; a reading later than the
// late-arrival tolerance is still stored raw but no longer reaches its closed window (the SQL
// output is append-only): `python -m shared.cli aggregates rebuild --start --end` recounts such a
// range from readings. The Event Hubs-triggered function is the exact path for any lateness (it
// adds each reading it inserts to its bucket's row). Run one path, not both.
//
// Both sides authenticate with the job's system-assigned identity: Azure Event Hubs Data Receiver
// on the namespace (rbac.bicep), and a contained database user created with T-SQL after
// provisioning (infra/README.md). The job is created stopped; start it once both tables exist
// (after the Alembic migrations), otherwise the outputs fail to validate.

param name string
param location string = resourceGroup().location
param tags object = {}

param eventHubNamespaceName string
param eventHubName string = 'readings'
param consumerGroupName string = 'asa'

param sqlServerName string
param sqlDatabaseName string
param sqlTable string = 'dbo.readings'
param sqlAggregatesTable string = 'dbo.bucket_aggregates'

@description('Bucket width in seconds: the Function App\'s BUCKET_SECONDS (function-app.bicep); keep in step.')
@minValue(1)
@maxValue(86400)
param bucketSeconds int = 60

@description('Streaming units. 3 is valid both as 3 classic SUs and as 1/3 of an SU V2.')
param streamingUnits int = 3

// The query below names these literally: keep in step.
var inputName = 'readings'
var outputName = 'sqlreadings'
var aggregatesOutputName = 'sqlaggregates'

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
      {
        name: aggregatesOutputName
        properties: {
          datasource: {
            type: 'Microsoft.Sql/Server/Database'
            properties: {
              server: sqlServerName
              database: sqlDatabaseName
              table: sqlAggregatesTable
              authenticationMode: 'Msi'
              maxWriterCount: 1
              maxBatchCount: 10000
            }
          }
        }
      }
    ]
    transformation: {
      name: 'bucket-aggregates'
      properties: {
        streamingUnits: streamingUnits
        // The width is spliced in (multi-line strings do not interpolate).
        query: replace('''
SELECT
    [device],
    [sensor],
    [ts],
    [value]
INTO
    [sqlreadings]
FROM
    [readings]

SELECT
    __BUCKET_SECONDS__ AS [bucket_seconds],
    DATEADD(second, -__BUCKET_SECONDS__, System.Timestamp()) AS [bucket_start],
    [device],
    [sensor],
    COUNT(*) AS [count],
    SUM([value]) AS [sum],
    MIN([value]) AS [min],
    MAX([value]) AS [max],
    SUM([value] * [value]) AS [sum_sq]
INTO
    [sqlaggregates]
FROM
    [readings] TIMESTAMP BY [ts]
GROUP BY
    [device],
    [sensor],
    TumblingWindow(second, __BUCKET_SECONDS__)
''', '__BUCKET_SECONDS__', string(bucketSeconds))
      }
    }
  }
}

output id string = job.id
output name string = job.name
output principalId string = job.identity.principalId
