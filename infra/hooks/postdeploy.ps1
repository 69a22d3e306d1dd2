# azd postdeploy hook (Windows): stage 2 of the Event Grid wiring. Same steps as postdeploy.sh:
# wait until `record_predictions` is indexed and the blobs_extension key exists, then deploy
# infra/app/predictions-subscription.bicep. Idempotent.
$ErrorActionPreference = 'Stop'

foreach ($name in 'AZURE_RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME', 'EVENTGRID_SYSTEM_TOPIC_NAME') {
    if (-not [Environment]::GetEnvironmentVariable($name)) {
        throw "postdeploy: $name is not set: run through azd (azd deploy / azd up)"
    }
}
$rg = $env:AZURE_RESOURCE_GROUP
$app = $env:AZURE_FUNCTION_APP_NAME
$functionName = 'record_predictions'
$template = Join-Path $PSScriptRoot '..' 'app' 'predictions-subscription.bicep'
$attempts = if ($env:POSTDEPLOY_ATTEMPTS) { [int]$env:POSTDEPLOY_ATTEMPTS } else { 30 }

$appHost = az functionapp show -g $rg -n $app --query defaultHostName -o tsv
Write-Host "postdeploy: waiting for $functionName to be indexed and the blobs_extension key to exist..."
for ($i = 1; ; $i++) {
    try { Invoke-WebRequest -Uri "https://$appHost/" -UseBasicParsing -TimeoutSec 30 | Out-Null } catch { }
    $indexed = az functionapp function list -g $rg -n $app --query "length([?ends_with(name, '/$functionName')])" -o tsv 2>$null
    $key = az functionapp keys list -g $rg -n $app --query 'systemKeys.blobs_extension' -o tsv 2>$null
    if ([int]("0$indexed") -ge 1 -and $key) { break }
    if ($i -ge $attempts) {
        throw "postdeploy: $functionName is not running on $app yet; check the deployment, then rerun this script or 'azd provision' with PREDICTIONS_SUBSCRIPTION_ENABLED=true"
    }
    Start-Sleep -Seconds 10
}

Write-Host "postdeploy: subscribing $functionName to BlobCreated events of prediction files..."
az deployment group create `
    --resource-group $rg `
    --name predictions-subscription `
    --template-file $template `
    --parameters systemTopicName=$env:EVENTGRID_SYSTEM_TOPIC_NAME functionAppName=$app functionName=$functionName `
    --output none
if ($LASTEXITCODE -ne 0) { throw 'postdeploy: the Event Grid subscription deployment failed' }
Write-Host "postdeploy: Event Grid subscription 'record-predictions' is in place."
