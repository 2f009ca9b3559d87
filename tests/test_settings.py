from __future__ import annotations

import re
from pathlib import Path

import pytest

from webhook.errors import ConfigError
from webhook.settings import Settings


def test_defaults_match_the_shipped_manifests():
    settings = Settings.from_env({})
    assert settings.bind == "0.0.0.0:8443"
    assert settings.identity_variable == "WHOEXEC_IDENTITY"
    assert settings.env_path == "/usr/bin/env"
    assert settings.webhook_name == "exec.whoexec.io"


def test_environment_is_read_with_the_whoexec_prefix():
    settings = Settings.from_env(
        {
            "WHOEXEC_WORKERS": "4",
            "WHOEXEC_CERTS": "/etc/whoexec",
            "WHOEXEC_EXCLUDE_GROUPS": "system:masters, ops-*",
            "WHOEXEC_TRUSTED_KEYS": "/keys/old.pub,/keys/older.pub",
            "OTHER_WORKERS": "9",
        }
    )
    assert settings.workers == 4
    assert settings.certs == Path("/etc/whoexec")
    assert settings.exclude_groups == ("system:masters", "ops-*")
    assert settings.trusted_keys == (Path("/keys/old.pub"), Path("/keys/older.pub"))


def test_flags_win_over_the_environment():
    settings = Settings.from_env({"WHOEXEC_WORKERS": "4"}, workers=1, bind=None)
    assert settings.workers == 1
    assert settings.bind == "0.0.0.0:8443"


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().workers = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WHOEXEC_WORKERS": "many"}, "WHOEXEC_WORKERS='many' is not an integer"),
        ({"WHOEXEC_WORKERS": "0"}, "workers and threads must be >= 1"),
        ({"WHOEXEC_ENV_PATH": "env"}, "absolute path"),
        ({"WHOEXEC_IDENTITY_VARIABLE": "WHO EXEC"}, "not a valid name"),
        ({"WHOEXEC_LOG_LEVEL": "chatty"}, "log_level 'chatty'"),
        ({"WHOEXEC_HEADER_TIMEOUT": "0"}, r"header_timeout 0.0 must be in \(0, 60\]"),
        ({"WHOEXEC_BODY_TIMEOUT": "600"}, r"body_timeout 600.0 must be in \(0, 60\]"),
        ({"WHOEXEC_WORKER_CONNECTIONS": "5"}, "worker_connections 5 is below 10"),
        (
            {"WHOEXEC_MAX_CONNECTIONS": "10", "WHOEXEC_MAX_CONNECTIONS_PER_PEER": "20"},
            r"max_connections_per_peer 20 must be in \[1, max_connections 10\]",
        ),
    ],
)
def test_bad_values_name_the_variable_and_value(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "path", ["env", ".whoexec/env", "/env", "/.whoexec/", "/.whoexec//env", "/a/../env", "/./env"]
)
def test_a_static_env_path_whose_directory_cannot_be_mounted_is_refused(path):
    # the pod CREATE mutation mounts the directory in every new pod: "/" or a relative
    # path would make each of them invalid
    with pytest.raises(ConfigError, match=re.escape(f"env_volume_path {path!r} must be an")):
        Settings.from_env({"WHOEXEC_ENV_VOLUME_PATH": path})


@pytest.mark.parametrize(
    ("path", "mounted_at"), [("/.whoexec/env", "/.whoexec"), ("/opt/who/bin/env", "/opt/who/bin")]
)
def test_the_static_env_is_mounted_at_the_directory_of_its_path(path, mounted_at):
    policy = Settings.from_env({"WHOEXEC_ENV_VOLUME_PATH": path}).admission_policy
    assert policy.env_mount_dir == mounted_at
