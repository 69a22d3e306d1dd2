// Azure SQL logical server + serverless General Purpose database with Microsoft Entra-only
// authentication: no SQL logins or passwords exist anywhere. The Entra administrator is a
// principal passed in (by default the user running azd). The Function App's managed identity and
// the Stream Analytics job's identity get database users afterwards, with T-SQL run by that
// administrator (see infra/README.md): Bicep cannot create contained database users.

param serverName string
param databaseName string
param location string = resourceGroup().location
param tags object = {}

@description('Object id (sid) of the Microsoft Entra principal that administers the server.')
param administratorObjectId string

@description('Display name of the administrator (a user principal name or a group name).')
param administratorLogin string

@allowed([
  'User'
  'Group'
  'Application'
])
param administratorPrincipalType string = 'User'

@description('Maximum vCores of the serverless database (GP_S_Gen5 capacity).')
@allowed([
  1
  2
  4
  6
  8
])
param maxVCores int = 1

@description('Minutes of inactivity before the serverless database pauses (60 is the smallest value; -1 disables auto-pause).')
param autoPauseDelayMinutes int = 60

@description('Maximum database size in GiB.')
param maxSizeGiB int = 32

@description('Optional public IP of an operator workstation, allowed through the firewall (for migrations and the SQL users). Empty: no rule.')
param clientIpAddress string = ''

resource server 'Microsoft.Sql/servers@2023-08-01' = {
  name: serverName
  location: location
  tags: tags
  properties: {
    version: '12.0'
    minimalTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
    administrators: {
      administratorType: 'ActiveDirectory'
      azureADOnlyAuthentication: true
      login: administratorLogin
      sid: administratorObjectId
      principalType: administratorPrincipalType
      tenantId: tenant().tenantId
    }
  }
}

// 0.0.0.0 - 0.0.0.0 is the documented special rule "Allow Azure services and resources to access
// this server": the Function App (Flex Consumption, no VNet here) and Stream Analytics connect
// through it.
resource allowAzureServices 'Microsoft.Sql/servers/firewallRules@2023-08-01' = {
  parent: server
  name: 'AllowAllWindowsAzureIps'
  properties: {
    startIpAddress: '0.0.0.0'
    endIpAddress: '0.0.0.0'
  }
}

resource allowClient 'Microsoft.Sql/servers/firewallRules@2023-08-01' = if (!empty(clientIpAddress)) {
  parent: server
  name: 'AllowOperatorClient'
  properties: {
    startIpAddress: clientIpAddress
    endIpAddress: clientIpAddress
  }
}

resource database 'Microsoft.Sql/servers/databases@2023-08-01' = {
  parent: server
  name: databaseName
  location: location
  tags: tags
  sku: {
    name: 'GP_S_Gen5'
    tier: 'GeneralPurpose'
    family: 'Gen5'
    capacity: maxVCores
  }
  properties: {
    autoPauseDelay: autoPauseDelayMinutes
    minCapacity: json('0.5')
    maxSizeBytes: maxSizeGiB * 1024 * 1024 * 1024
    zoneRedundant: false
    requestedBackupStorageRedundancy: 'Local'
    collation: 'SQL_Latin1_General_CP1_CI_AS'
  }
}

output serverId string = server.id
output serverName string = server.name
output serverFqdn string = server.properties.fullyQualifiedDomainName
output databaseName string = database.name
