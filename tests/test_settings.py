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
    ("env", "message"),
    [
        ({"WHOEXEC_WORKERS": "1", "WHOEXEC_THREADS": "1"}, None),
        ({"WHOEXEC_THREADS": "0"}, "workers and threads must be >= 1, got 2/0"),
        ({"WHOEXEC_POD_LOOKUP_TIMEOUT": "5"}, None),
        ({"WHOEXEC_POD_LOOKUP_TIMEOUT": "0.01"}, None),
        ({"WHOEXEC_POD_LOOKUP_TIMEOUT": "5.01"}, "pod_lookup_timeout 5.01 must be in (0, 5] "),
        ({"WHOEXEC_POD_LOOKUP_TIMEOUT": "0"}, "pod_lookup_timeout 0.0 must be in (0, 5] "),
        ({"WHOEXEC_FRESH_SECONDS": "1", "WHOEXEC_ROOT_SKEW_SECONDS": "0"}, None),
        ({"WHOEXEC_AUDIT_GRACE_SECONDS": "0"}, None),
        ({"WHOEXEC_FRESH_SECONDS": "0"}, "fresh_seconds (0) must be >= 1"),
        ({"WHOEXEC_ROOT_SKEW_SECONDS": "-1"}, "root_skew_seconds (-1) and audit_grace"),
        ({"WHOEXEC_AUDIT_GRACE_SECONDS": "-1"}, "audit_grace_seconds (-1) >= 0"),
        ({"WHOEXEC_HOLD_SECONDS": "0", "WHOEXEC_MAX_PROCESSES": "1"}, None),
        ({"WHOEXEC_HOLD_SECONDS": "-1"}, "hold_seconds must be >= 0 and max_processes >= 1"),
        ({"WHOEXEC_MAX_PROCESSES": "0"}, "hold_seconds must be >= 0 and max_processes >= 1"),
        ({"WHOEXEC_TLS_CERT": "/tls/tls.crt"}, "tls_cert and tls_key go together"),
        ({"WHOEXEC_TLS_KEY": "/tls/tls.key"}, "tls_cert and tls_key go together"),
        ({"WHOEXEC_UI_TOKEN": "t" * 16}, None),
        ({"WHOEXEC_UI_TOKEN": "t" * 15}, "ui_token must be at least 16 characters"),
        ({"WHOEXEC_MAX_BODY_BYTES": "1024"}, None),
        ({"WHOEXEC_MAX_BODY_BYTES": "1023"}, "max_body_bytes 1023 is below 1024"),
        ({"WHOEXEC_HEADER_TIMEOUT": "60"}, None),
        ({"WHOEXEC_HANDSHAKE_TIMEOUT": "1", "WHOEXEC_BODY_TIMEOUT": "0.5"}, None),
        ({"WHOEXEC_HANDSHAKE_TIMEOUT": "60.5"}, "handshake_timeout 60.5 must be in (0, 60] "),
        ({"WHOEXEC_WORKER_CONNECTIONS": "10"}, None),
        ({"WHOEXEC_WORKER_CONNECTIONS": "9"}, "worker_connections 9 is below 10"),
        ({"WHOEXEC_MAX_CONNECTIONS_PER_PEER": "1"}, None),
        ({"WHOEXEC_MAX_CONNECTIONS": "10", "WHOEXEC_MAX_CONNECTIONS_PER_PEER": "10"}, None),
        (
            {"WHOEXEC_MAX_CONNECTIONS_PER_PEER": "0"},
            "max_connections_per_peer 0 must be in [1, max_connections ",
        ),
        ({"WHOEXEC_UI_SESSION_SECONDS": "60"}, None),
        ({"WHOEXEC_UI_SESSION_SECONDS": "59"}, "ui_session_seconds 59 is below 60"),
    ],
)
def test_each_bound_of_the_settings_holds_at_its_edge(env, message):
    if message is None:
        Settings.from_env(env)
    else:
        with pytest.raises(ConfigError, match=re.escape(message)):
            Settings.from_env(env)


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("true", True), ("YES", True), ("On", True),
     ("0", False), ("false", False), ("No", False), ("OFF", False), ("", False)],
)  # fmt: skip
def test_a_boolean_setting_reads_the_usual_words_in_any_case(raw, value):
    assert Settings.from_env({"WHOEXEC_FORWARD_ROOTS": raw}).forward_roots is value


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WHOEXEC_FORWARD_ROOTS": "maybe"}, "WHOEXEC_FORWARD_ROOTS='maybe' is not a boolean"),
        ({"WHOEXEC_HOLD_SECONDS": "soon"}, "WHOEXEC_HOLD_SECONDS='soon' is not a number"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_variable(env, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        Settings.from_env(env)


def test_numbers_and_optional_paths_are_read_as_their_types():
    settings = Settings.from_env({"WHOEXEC_HOLD_SECONDS": "2.5", "WHOEXEC_PROCFS": "/host/proc"})
    assert (settings.hold_seconds, settings.procfs) == (2.5, Path("/host/proc"))
    assert Settings.from_env({"WHOEXEC_PROCFS": ""}).procfs is None, "empty is unset"


def test_a_changed_copy_of_the_settings_is_checked_like_the_original():
    settings = Settings.from_env({})
    changed = settings.replace(workers=3, bind="127.0.0.1:9443")
    assert (changed.workers, changed.bind) == (3, "127.0.0.1:9443")
    assert (settings.workers, settings.bind) == (2, "0.0.0.0:8443"), "the original is kept"
    with pytest.raises(ConfigError, match="workers and threads must be >= 1, got 0/"):
        settings.replace(workers=0)


def test_a_flag_that_is_no_setting_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="no_such_knob"):
        Settings.from_env({}, no_such_knob=1)


@pytest.mark.parametrize(
    "level", ["debug", "info", "warning", "error", "critical", "DEBUG", "Info"]
)
def test_every_log_level_is_accepted_in_any_case(level):
    assert Settings.from_env({"WHOEXEC_LOG_LEVEL": level}).log_level == level


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
    from webhook.admission.wsgi import admission_policy

    policy = admission_policy(Settings.from_env({"WHOEXEC_ENV_VOLUME_PATH": path}))
    assert policy.env_mount_dir == mounted_at


def test_every_admission_variable_the_readme_documents_reaches_the_webhook_s_policy():
    from webhook.admission.policy import AdmissionPolicy
    from webhook.admission.wsgi import admission_policy

    env = {
        "WHOEXEC_IDENTITY_VARIABLE": "MYCO_ID",
        "WHOEXEC_ENV_PATH": "/bin/env",
        "WHOEXEC_EXCLUDE_NAMESPACES": "kube-*,infra",
        "WHOEXEC_EXCLUDE_USERS": "system:serviceaccount:kube-system:*",
        "WHOEXEC_EXCLUDE_GROUPS": "break-glass",
        "WHOEXEC_CLOCK_SKEW_SECONDS": "60",
        "WHOEXEC_ENV_VOLUME_PATH": "/opt/who/env",
        "WHOEXEC_IMAGES_WITHOUT_ENV": "gcr.io/distroless/*",
        "WHOEXEC_ENV_TRUSTED_NAMESPACES": "shop",
        "WHOEXEC_ENV_TRUSTED_IMAGES": "debian:*",
        "WHOEXEC_STATIC_ENV_CPU": "20m",
        "WHOEXEC_STATIC_ENV_MEMORY": "32Mi",
        "WHOEXEC_STATIC_ENV_IMAGE": "registry.example/whoexec:1.2.3",
    }
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert all(f"`{name}`" in readme or name in readme for name in env)
    assert admission_policy(Settings.from_env(env)) == AdmissionPolicy(
        identity_variable="MYCO_ID",
        env_path="/bin/env",
        exclude_namespaces=("kube-*", "infra"),
        exclude_users=("system:serviceaccount:kube-system:*",),
        exclude_groups=("break-glass",),
        clock_skew_seconds=60,
        env_volume_path="/opt/who/env",
        images_without_env=("gcr.io/distroless/*",),
        env_trusted_namespaces=("shop",),
        env_trusted_images=("debian:*",),
        static_env_cpu="20m",
        static_env_memory="32Mi",
        static_env_image="registry.example/whoexec:1.2.3",
    )


# --- what production builds from the defaults ---------------------------------------------
# The lineage tests pass their own ReplayPolicy; these go through Settings ->
# build_consumer, as `whoexec consume` does, so a changed default cannot pass unseen.


@pytest.fixture
def built_from(tmp_path, signer):
    """Feed alerts to a consumer built as `whoexec consume` builds it, from the defaults,
    one key and ``env`` (WHOEXEC_* variables); what came out of it."""
    from cryptography.hazmat.primitives import serialization

    from webhook.attribution.app import build_consumer
    from webhook.attribution.pipeline import MemorySink

    pub = tmp_path / "identity.pub"
    pub.write_bytes(
        signer.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    def feed(alerts: list, **env: str) -> list:
        import orjson

        state = str(tmp_path / "state")
        settings = Settings.from_env(
            {"WHOEXEC_IDENTITY_PUB": str(pub), "WHOEXEC_STATE_DIR": state, **env}
        )
        sink = MemorySink()
        consumer = build_consumer(settings, stdout=None, input_name="test", extra_sinks=[sink])
        consumer.pipeline.feed([orjson.dumps(alert) for alert in alerts], where="test")
        consumer.close()
        return sink.alerts

    return feed


@pytest.fixture
def default_consumer(built_from, signer):
    def attribution(
        root_start_s: float, event_s: float | None = None, pid: int = 40, **env: str
    ) -> dict:
        """The attribution of a session root that started ``root_start_s`` after its
        token was issued, seen in an event ``event_s`` after it (default: at its start)."""
        from tests.attribution.test_lineage import START, make_token, root_alert

        token, _ = make_token(signer)
        start = START + int(root_start_s * 10**9)
        event = START + int((root_start_s if event_s is None else event_s) * 10**9)
        out = built_from(
            [root_alert(pid, token, **{"proc.pid.ts": start, "evt.time": event})], **env
        )
        (alert,) = [a for a in out if a["source"] == "syscall"]
        # the findings' reasons, beside the alert's own fields
        reasons = [a["output_fields"].get("whoexec.reason") for a in out]
        return {**alert["output_fields"], "reasons": [r for r in reasons if r]}

    return attribution


@pytest.mark.parametrize(
    ("root_start_s", "status"),
    [
        (0.5, "verified"),  # measured on a real cluster: 0.05 to 1.1 s
        (30, "verified"),  # a loaded node
        (31, "replayed"),
        (61, "replayed"),  # the token read a minute later, on a node that never saw it used
        (-5, "verified"),  # the node's clock behind the webhook's (iat is in whole seconds)
        (-6, "replayed"),
    ],
)
def test_a_consumer_built_from_the_defaults_believes_only_a_root_that_started_near_its_token(
    default_consumer, root_start_s, status
):
    fields = default_consumer(root_start_s)
    assert fields["whoexec.attribution"] == status
    assert (fields["whoexec.user.name"] is None) is (status == "replayed")


def test_the_operator_s_freshness_window_and_skew_are_what_the_consumer_uses(default_consumer):
    wide = {"WHOEXEC_FRESH_SECONDS": "120", "WHOEXEC_ROOT_SKEW_SECONDS": "20"}
    assert default_consumer(61, **wide)["whoexec.attribution"] == "verified"
    assert default_consumer(-20, **wide)["whoexec.attribution"] == "verified"
    assert default_consumer(121, **wide)["whoexec.attribution"] == "replayed"
    ahead = default_consumer(0, event_s=-301, WHOEXEC_CLOCK_SKEW_SECONDS="600")
    assert ahead["whoexec.attribution"] == "verified"


def test_consumers_built_on_one_store_root_a_session_id_once_between_them(
    default_consumer, tmp_path
):
    db = {"WHOEXEC_DB": f"sqlite:///{tmp_path}/whoexec.db"}
    assert default_consumer(1, pid=40, **db)["whoexec.attribution"] == "verified"
    # another consumer (its own process table) sees a second root of the same token
    replay = default_consumer(10, pid=50, **db)
    assert replay["whoexec.attribution"] == "replayed"
    assert any(
        r.startswith("reused: session s-1 was already rooted by pid 40") for r in replay["reasons"]
    )


@pytest.mark.parametrize(("ahead_s", "status"), [(300, "verified"), (301, "unverified")])
def test_a_consumer_built_from_the_defaults_refuses_a_token_from_more_than_300_s_ahead(
    default_consumer, ahead_s, status
):
    # the event is seen ahead_s before the token was issued: the webhook's clock runs ahead
    fields = default_consumer(0, event_s=-ahead_s)
    assert fields["whoexec.attribution"] == status
    if status == "unverified":
        (reason,) = fields["reasons"]
        assert reason.startswith("TokenFromFuture: token iat 1795341600 is 301s after the event")


def test_a_consumer_built_from_the_defaults_holds_an_alert_that_comes_before_its_root(
    built_from, signer
):
    # delivered out of order (a forwarder between Falco and the consumer): the shell's
    # alert comes first, its session root's after it
    from tests.attribution.test_lineage import START, alert_for, make_token, root_alert

    token, _ = make_token(signer)
    shell = alert_for(41, **{"proc.apid[1]": 40, "proc.pid.ts": START + 10**9})
    out = built_from([shell, root_alert(40, token)])
    users = [
        (a["output_fields"]["proc.pid"], a["output_fields"]["whoexec.user.name"])
        for a in out
        if a["source"] == "syscall"
    ]
    assert sorted(users) == [(40, "alice@corp.example"), (41, "alice@corp.example")]
