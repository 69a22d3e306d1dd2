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
    ],
)
def test_malformed_setting_is_named(env, named):
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)
