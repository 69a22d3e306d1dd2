"""Checks of the Bicep in ``infra/`` against limits Azure enforces only at deployment time.

No Bicep compiler or Azure here: the templates are read as text, the parameter declarations with
their decorators parsed out, and their bounds and defaults compared with the platform's limits.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import ROOT

INFRA = ROOT / "infra"
# Flex Consumption: maximumInstanceCount must lie in [40, 1000]; below 40 provisioning fails.
FLEX_MIN_INSTANCES, FLEX_MAX_INSTANCES = 40, 1000

_PARAM = re.compile(
    r"(?P<decorators>(?:^@\w+\((?:[^()'\"]|'[^']*'|\"[^\"]*\"|\([^()]*\))*\)\s*\n)*)"
    r"^param\s+(?P<name>\w+)\s+(?P<type>\w+)(?:\s*=\s*(?P<default>[^\n]+))?",
    re.M,
)


def bicep_params(path) -> dict[str, dict]:
    """``name -> {type, default, minValue, maxValue}`` for each ``param`` of a Bicep file."""
    params = {}
    for m in _PARAM.finditer(path.read_text()):
        decorators = m.group("decorators")
        bounds = {k: int(v) for k, v in re.findall(r"@(minValue|maxValue)\((-?\d+)\)", decorators)}
        params[m.group("name")] = {
            "type": m.group("type"),
            "default": (m.group("default") or "").strip() or None,
            **bounds,
        }
    return params


def test_parser_reads_decorators_and_defaults():
    params = bicep_params(INFRA / "app" / "azureml.bicep")
    assert params["computeMinNodes"] == {"type": "int", "default": "0", "minValue": 0}
    assert params["computeMaxNodes"]["minValue"] == 1


@pytest.mark.parametrize(
    ("bicep", "param"),
    [
        ("main.bicep", "functionMaximumInstanceCount"),
        ("app/function-app.bicep", "maximumInstanceCount"),
    ],
)
def test_flex_consumption_instance_count_stays_within_the_plan_limits(bicep, param):
    declared = bicep_params(INFRA / bicep)[param]
    assert declared["type"] == "int"
    assert declared.get("minValue", 0) >= FLEX_MIN_INSTANCES, (
        f"{bicep}: @minValue of {param} lets through values Flex Consumption rejects"
    )
    assert declared.get("maxValue", 10**9) <= FLEX_MAX_INSTANCES
    assert FLEX_MIN_INSTANCES <= int(declared["default"]) <= FLEX_MAX_INSTANCES


def test_azd_parameter_default_for_instance_count_is_valid():
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    value = parameters["functionMaximumInstanceCount"]["value"]
    default = re.fullmatch(r"\$\{FUNCTION_MAX_INSTANCES=(\d+)\}", value)
    assert default, value
    assert FLEX_MIN_INSTANCES <= int(default.group(1)) <= FLEX_MAX_INSTANCES


def test_azd_environment_carries_the_clusters_settings_as_bicep_made_it():
    """``azureml provision`` after ``azd provision`` reads its AZUREML_* cluster settings from
    the azd environment: main.bicep outputs each one the Function App gets, from the same
    parameter, so the two cannot disagree (VM size, priority/tier, scale, identity)."""
    main = (INFRA / "main.bicep").read_text()
    outputs = dict(re.findall(r"^output (AZUREML_\w+) string = (.+)$", main, re.M))
    app = (INFRA / "app" / "function-app.bicep").read_text()
    app_settings = dict(re.findall(r"^\s+(AZUREML_\w+): (.+)$", app, re.M))
    cluster = {
        "AZUREML_COMPUTE",
        "AZUREML_VM_SIZE",
        "AZUREML_TIER",
        "AZUREML_MIN_NODES",
        "AZUREML_MAX_NODES",
        "AZUREML_IDLE_SECONDS",
        "AZUREML_IDENTITY_RESOURCE_ID",
    }
    assert cluster <= set(app_settings)
    assert cluster <= set(outputs), f"not output for azd: {cluster - set(outputs)}"
    # The tier is derived from the same priority parameter, with the same mapping.
    assert (
        "computeVmPriority == 'LowPriority' ? 'low_priority' : 'dedicated'"
        in outputs["AZUREML_TIER"]
    )
    assert (
        "azureMLVmPriority == 'LowPriority' ? 'low_priority' : 'dedicated'"
        in app_settings["AZUREML_TIER"]
    )


def test_alerts_topic_takes_cloudevents_from_the_apps_identity_only():
    """The alerts topic (infra/app/alerts.bicep): CloudEvents 1.0 input, no access keys, the
    built-in EventGrid Data Sender role for the Function App's identity, and its endpoint in
    the app setting the publisher reads (shared.alerts.delivery)."""
    alerts = (INFRA / "app" / "alerts.bicep").read_text()
    assert "'Microsoft.EventGrid/topics@" in alerts
    assert "inputSchema: 'CloudEventSchemaV1_0'" in alerts
    assert "disableLocalAuth: true" in alerts
    # EventGrid Data Sender's built-in role id, assigned on the topic.
    assert "d5a91429-5739-47e2-a06b-3470a27159e7" in alerts and "scope: topic" in alerts
    main = (INFRA / "main.bicep").read_text()
    assert "publisherPrincipalId: identity.outputs.principalId" in main
    assert "alertsTopicEndpoint: alerts.outputs.endpoint" in main
    app = (INFRA / "app" / "function-app.bicep").read_text()
    assert "ALERTS_EVENTGRID_ENDPOINT: alertsTopicEndpoint" in app
    assert bicep_params(INFRA / "main.bicep")["alertsWebhookFormat"]["default"] == "'cloudevents'"
