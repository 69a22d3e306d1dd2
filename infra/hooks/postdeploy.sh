#!/bin/sh
# azd postdeploy hook: stage 2 of the Event Grid wiring (see infra/app/predictions-subscription.bicep).
#
# The Event Grid subscription that feeds the `record_predictions` blob trigger needs the Functions
# host's `blobs_extension` system key in its webhook URL, and Event Grid validates the webhook when
# the subscription is created. Both exist only once the code is deployed and the host has indexed
# the function, which is why this runs after `azd deploy` and not during `azd provision`.
#
# azd passes the environment's values (the Bicep outputs) as environment variables. To run it by
# hand: `azd env get-values > .env.azd && set -a && . ./.env.azd && set +a && sh infra/hooks/postdeploy.sh`.
# It is idempotent: it (re)deploys the same subscription under the same name.
set -eu

: "${AZURE_RESOURCE_GROUP:?not set: run through azd or load the azd environment first}"
: "${AZURE_FUNCTION_APP_NAME:?not set: run through azd or load the azd environment first}"
: "${EVENTGRID_SYSTEM_TOPIC_NAME:?not set: run azd provision first}"

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
template="$here/../app/predictions-subscription.bicep"
rg="$AZURE_RESOURCE_GROUP"
app="$AZURE_FUNCTION_APP_NAME"
function_name="record_predictions"
attempts="${POSTDEPLOY_ATTEMPTS:-30}"

command -v az >/dev/null 2>&1 || { echo "postdeploy: the Azure CLI (az) is required" >&2; exit 1; }

host=$(az functionapp show -g "$rg" -n "$app" --query defaultHostName -o tsv)

echo "postdeploy: waiting for $function_name to be indexed and the blobs_extension key to exist..."
i=0
while :; do
  i=$((i + 1))
  # A request wakes a scaled-to-zero Flex Consumption app so the host indexes its functions.
  curl -s -o /dev/null --max-time 30 "https://$host/" || true
  indexed=$(az functionapp function list -g "$rg" -n "$app" \
    --query "length([?ends_with(name, '/$function_name')])" -o tsv 2>/dev/null || echo 0)
  key=$(az functionapp keys list -g "$rg" -n "$app" \
    --query "systemKeys.blobs_extension" -o tsv 2>/dev/null || true)
  if [ "${indexed:-0}" -ge 1 ] && [ -n "$key" ]; then
    break
  fi
  if [ "$i" -ge "$attempts" ]; then
    echo "postdeploy: $function_name is not running on $app yet (indexed=$indexed, key present: $([ -n "$key" ] && echo yes || echo no))." >&2
    echo "postdeploy: check the deployment logs, then rerun this script or 'azd provision' with PREDICTIONS_SUBSCRIPTION_ENABLED=true." >&2
    exit 1
  fi
  sleep 10
done

echo "postdeploy: subscribing $function_name to BlobCreated events of prediction files..."
az deployment group create \
  --resource-group "$rg" \
  --name predictions-subscription \
  --template-file "$template" \
  --parameters systemTopicName="$EVENTGRID_SYSTEM_TOPIC_NAME" functionAppName="$app" functionName="$function_name" \
  --output none
echo "postdeploy: Event Grid subscription 'record-predictions' is in place."
