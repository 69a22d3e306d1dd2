"""Settings: defaults that work with no configuration, identity-based connections, and clear
errors naming a bad setting."""

import pytest

from shared.settings import AZURITE_CONNECTION_STRING, Settings, SettingsError


def test_defaults_need_no_configuration(tmp_path):
    s = Settings.from_env({"DATA_DIR": str(tmp_path)})
    assert s.sql_url == f"sqlite:///{tmp_path.as_posix()}/scoring.db"
    assert s.storage.connection_string == AZURITE_CONNECTION_STRING
    assert s.uses_azurite
    assert s.executor == "local"
    assert s.bucket_seconds == 60
    assert s.scoring_schedule == "0 0 * * * *"
    assert s.azureml.min_nodes == 0


def test_identity_based_connections():
    s = Settings.from_env(
        {
            "ScoringStorage__accountName": "acct",
            "ScoringStorage__credential": "managedidentity",
            "ScoringStorage__clientId": "cid",
            "EventHubConnection__fullyQualifiedNamespace": "ns.servicebus.windows.net",
        }
    )
    assert s.storage.identity_based
    assert s.storage.endpoint == "https://acct.blob.core.windows.net"
    assert s.storage.client_id == "cid"
    assert s.eventhub.endpoint == "ns.servicebus.windows.net"
    assert not s.uses_azurite


def test_blob_service_uri_wins_for_sovereign_clouds():
    s = Settings.from_env(
        {"ScoringStorage__blobServiceUri": "https://a.blob.core.chinacloudapi.cn"}
    )
    assert s.storage.endpoint == "https://a.blob.core.chinacloudapi.cn"


def test_azure_sql_passwordless():
    s = Settings.from_env({"SQL_SERVER": "srv.database.windows.net", "SQL_DATABASE": "db"})
    assert s.sql_url == ""
    assert s.sql_server == "srv.database.windows.net"


@pytest.mark.parametrize(
    "env, named",
    [
        ({"BUCKET_SECONDS": "abc"}, "BUCKET_SECONDS"),
        ({"BUCKET_SECONDS": "0"}, "BUCKET_SECONDS"),
        ({"SENSORS_PER_CHUNK": "-5"}, "SENSORS_PER_CHUNK"),
        ({"TARGET_FALSE_ALARM_RATE": "nan"}, "TARGET_FALSE_ALARM_RATE"),
        ({"SCORING_SCHEDULE": "0 * * * *"}, "SCORING_SCHEDULE"),
        ({"SCORING_SCHEDULE": "banana"}, "SCORING_SCHEDULE"),
        ({"EXECUTOR": "spark"}, "EXECUTOR"),
        ({"EXECUTOR": "azureml"}, "AZUREML_SUBSCRIPTION_ID"),
        ({"MODELS_CONTAINER": "Bad_Name"}, "MODELS_CONTAINER"),
        ({"SQL_SERVER": "srv"}, "SQL_DATABASE"),
        ({"ScoringStorage__credential": "secret"}, "ScoringStorage__credential"),
        ({"AZUREML_MIN_NODES": "3", "AZUREML_MAX_NODES": "2"}, "AZUREML_MIN_NODES"),
        # Bounds and rules (issue 11): each of these passed and failed later, at every call.
        ({"MAX_WINDOW_HOURS": "1e308"}, r"MAX_WINDOW_HOURS=1e\+308 must be at most 8784"),
        ({"RUN_TIMEOUT_MINUTES": "1e300"}, r"RUN_TIMEOUT_MINUTES=1e\+300 must be at most"),
        ({"BUCKET_SECONDS": "100000000000000000000"}, "BUCKET_SECONDS=.* must be at most"),
        ({"BUCKET_SECONDS": "1" + "0" * 5000}, "BUCKET_SECONDS=.* is not an integer"),
        ({"LOCAL_WORKERS": "\u0663"}, "LOCAL_WORKERS=.* is not an integer"),
        ({"MODELS_CONTAINER": "mod\u00e8ls"}, "MODELS_CONTAINER=.*lowercase letters a-z"),
        ({"RUNS_QUEUE": "run--requests"}, "RUNS_QUEUE=.*single hyphens"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL='VERBOSE' must be one of"),
    ],
)
def test_malformed_setting_is_named(env, named):
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "name, value",
    [("BUCKET_SECONDS", "abc"), ("LOG_LEVEL", "verbose"), ("MODELS_CONTAINER", "mod\u00e8ls")],
)
def test_importing_function_app_fails_naming_a_malformed_setting(name, value):
    """What the Functions host does first: import function_app. A bad setting must fail right
    there (the worker's indexing fails and no function starts), naming the setting."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    result = subprocess.run(
        [sys.executable, "-c", "import function_app"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, name: value},
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("shared.settings.SettingsError: " + name), result.stderr[-2000:]
