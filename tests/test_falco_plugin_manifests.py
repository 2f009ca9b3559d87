"""The Falco plugin's chart values and example rule agree with the plugin and the consumer."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from webhook.settings import Settings

ROOT = Path(__file__).parent.parent
FALCO = ROOT / "manifests" / "falco"
PLUGIN_SOURCE = ROOT / "plugin" / "src" / "lib.rs"


def load(name: str):
    return yaml.safe_load((FALCO / name).read_text())


def plugin_fields() -> dict[str, bool]:
    """Each field the plugin declares, and whether it is declared addOutput."""
    table = PLUGIN_SOURCE.read_text().split("EXTRACT_FIELDS: &'static")[1].split("];")[0]
    out = {}
    for block in table.split("field(")[1:]:
        name = re.match(r'"(whoexec\.[a-z.]+)"', block)
        assert name, block[:80]
        out[name.group(1)] = ".add_output()" in block
    return out


def test_values_embed_the_plugin_rules_file_verbatim():
    embedded = load("values-plugin.yaml")["customRules"]["whoexec_plugin_rules.yaml"]
    assert yaml.safe_load(embedded) == load("whoexec_plugin_rules.yaml")


def test_every_field_the_issue_names_is_declared_and_appended_to_every_alert():
    fields = plugin_fields()
    for name in (
        "whoexec.user",
        "whoexec.uid",
        "whoexec.groups",
        "whoexec.session",
        "whoexec.attribution",
        "whoexec.claimed.user",
        "whoexec.token",
    ):
        assert fields.get(name) is True, name


def test_the_example_rule_uses_only_fields_the_plugin_declares_and_names_the_user():
    fields = plugin_fields()
    (rule,) = [item for item in load("whoexec_plugin_rules.yaml") if "rule" in item]
    used = set(re.findall(r"whoexec\.[a-z.]+[a-z]", rule["condition"] + rule["output"]))
    assert used <= set(fields), used - set(fields)
    assert "whoexec.groups" in rule["condition"]
    assert "%whoexec.user" in rule["output"]


def test_the_container_plugin_parses_before_whoexec_and_the_windows_are_the_consumer_s():
    falco = load("values-plugin.yaml")["falco"]
    assert falco["load_plugins"] == ["container", "whoexec"]
    (plugin,) = falco["plugins"]
    settings = Settings()
    assert plugin["init_config"]["fresh_seconds"] == settings.fresh_seconds
    assert plugin["init_config"]["root_skew_seconds"] == settings.root_skew_seconds
    mounted = {m["mountPath"] for m in load("values-plugin.yaml")["mounts"]["volumeMounts"]}
    assert str(Path(plugin["library_path"]).parent) in mounted
    key_files = [Path(f) for f in plugin["init_config"]["public_key_files"]]
    # the current key and the one before the last rotation, as the consumers trust them
    assert [f.name for f in key_files] == ["identity.pub", "identity.previous.pub"]
    assert all(str(f.parent) in mounted for f in key_files)
