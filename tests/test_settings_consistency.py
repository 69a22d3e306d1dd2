"""Every app setting the code reads is set by the infrastructure and listed in
local.settings.example.json, and the reverse, so the three cannot drift apart."""

import json
import re

from tests.conftest import ROOT

# Read by the Functions host or the platform, not by the app's code.
HOST_ONLY = {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage", "AzureWebJobsFeatureFlags"}
# Meaningful only on a developer's machine (Azure uses SQL_SERVER/SQL_DATABASE and no data dir).
LOCAL_ONLY = {"DATA_DIR", "SQL_URL"}


def family(name: str) -> str:
    """``ScoringStorage__accountName`` and ``ScoringStorage`` are one connection setting."""
    return name.split("__", 1)[0]


def names_the_code_reads() -> set[str]:
    settings_py = (ROOT / "shared" / "settings.py").read_text()
    names = set(
        re.findall(
            r"r\.(?:text|optional|integer|number|choice|container|connection)"
            r"\(\s*\"([A-Za-z_][A-Za-z0-9_]*)\"",
            settings_py,
        )
    )
    names |= {m for m in re.findall(r"connection\((\w+)_CONNECTION", settings_py)}
    constants = dict(re.findall(r"^(\w+)_CONNECTION = \"(\w+)\"", settings_py, re.M))
    names |= set(constants.values())
    names -= set(constants)  # STORAGE/EVENTHUB were constant names, not settings
    for path in [*(ROOT / "shared").rglob("*.py"), ROOT / "function_app.py"]:
        text = path.read_text()
        names |= set(re.findall(r"os\.environ\.get\(\s*\"([A-Za-z_][A-Za-z0-9_]*)\"", text))
    app = (ROOT / "function_app.py").read_text()
    # Binding expressions (%NAME%) and binding connections are read by the host from settings.
    names |= set(re.findall(r"=\s*\"[^\"]*%([A-Z][A-Z0-9_]+)%", app))
    names |= set(re.findall(r"connection=\"([A-Za-z_][A-Za-z0-9_]*)\"", app))
    return {family(n) for n in names} - {"FUNCTIONS_WORKER_RUNTIME"}


def names_in_local_settings() -> set[str]:
    values = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    return {family(n) for n in values} - HOST_ONLY


def names_in_infra() -> set[str]:
    text = (ROOT / "infra" / "app" / "function-app.bicep").read_text()
    block = text[text.index("var appSettings = {") :]
    block = block[: block.index("\n}")]
    names = re.findall(r"^\s+'?([A-Za-z0-9_.]+)'?\s*:", block, re.M)
    return {family(n) for n in names if not n.startswith("AzureWebJobs")} - HOST_ONLY


def test_settings_module_names_are_found():
    code = names_the_code_reads()
    assert {
        "SQL_URL",
        "ScoringStorage",
        "EventHubConnection",
        "SCORING_SCHEDULE",
        "AZUREML_IDENTITY_RESOURCE_ID",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "EVENTHUB_NAME",
        "PREDICTIONS_CONTAINER",
    } <= code


def test_local_settings_example_lists_exactly_what_the_code_reads():
    code, local = names_the_code_reads(), names_in_local_settings()
    assert code - local == set(), "read by the code, missing from local.settings.example.json"
    assert local - code == set(), "in local.settings.example.json, never read by the code"


def test_infrastructure_sets_exactly_what_the_code_reads_in_azure():
    code, infra = names_the_code_reads() - LOCAL_ONLY, names_in_infra()
    assert code - infra == set(), "read by the code, not set by infra/app/function-app.bicep"
    assert infra - code == set(), "set by infra/app/function-app.bicep, never read by the code"


def test_every_setting_reads_through_settings_or_logging():
    """No module reads app settings straight from the environment except settings and logs
    (logging is configured before settings are read, at import of function_app)."""
    offenders = []
    for path in (ROOT / "shared").rglob("*.py"):
        if path.name in {"settings.py", "logs.py"} or "local" in path.parts:
            continue
        if re.search(r"os\.environ(\.get|\[)", path.read_text()):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_retention_defaults_agree_with_the_storage_lifecycle_policy():
    """PREDICTIONS_RETENTION_DAYS (SQL rows) and the lifecycle rule for predictions blobs keep
    the same days; the readings default is the same in the code, the example and the infra."""
    from shared.settings import Settings

    settings = Settings.from_env({})
    local = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    app = (ROOT / "infra" / "app" / "function-app.bicep").read_text()
    storage = (ROOT / "infra" / "app" / "storage.bicep").read_text()
    for name, value in (
        ("READINGS_RETENTION_DAYS", settings.readings_retention_days),
        ("PREDICTIONS_RETENTION_DAYS", settings.predictions_retention_days),
    ):
        assert float(local[name]) == value, name
        assert float(re.search(rf"^\s+{name}: '(\d+)'", app, re.M).group(1)) == value, name
    lifecycle = re.search(r"^param predictionsRetentionDays int = (\d+)", storage, re.M)
    assert float(lifecycle.group(1)) == settings.predictions_retention_days
    assert "Microsoft.Storage/storageAccounts/managementPolicies" in storage
    for rule in ("delete-old-chunks", "delete-old-predictions"):
        assert f"name: '{rule}'" in storage
