"""The shipped Falco chart values and rules agree with what the consumer reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from webhook.attribution.falco import LINEAGE_FIELDS, WHOEXEC_TAG
from webhook.settings import Settings

FALCO = Path(__file__).parent.parent / "manifests" / "falco"


def load(name: str):
    return yaml.safe_load((FALCO / name).read_text())


def test_values_embed_the_rules_file_verbatim():
    values = load("values.yaml")
    embedded = values["customRules"]["whoexec_rules.yaml"]
    assert yaml.safe_load(embedded) == load("whoexec_rules.yaml")


def test_every_lineage_field_the_consumer_reads_is_appended_to_syscall_alerts():
    (entry,) = [e for e in load("values.yaml")["falco"]["append_output"] if "match" in e]
    assert entry["match"] == {"source": "syscall"}
    variable = Settings().identity_variable
    wanted = {field.format(variable=variable) for field in LINEAGE_FIELDS}
    assert wanted <= set(entry["extra_fields"])


def test_json_output_goes_to_the_consumer_over_http():
    falco = load("values.yaml")["falco"]
    assert falco["json_output"] is True
    assert falco["http_output"]["enabled"] is True
    assert falco["http_output"]["url"].endswith(":2802/falco")


def test_every_shipped_rule_is_tagged_so_the_consumer_does_not_forward_it():
    items = load("whoexec_rules.yaml")
    rules = [item for item in items if "rule" in item]
    assert [r["rule"] for r in rules] == [
        "Whoexec exec session root",
        "Whoexec debug container root",
        "Whoexec exec entry",
    ]
    for rule in rules:
        assert WHOEXEC_TAG in rule["tags"]
        assert {"rule", "desc", "condition", "output", "priority"} <= set(rule)
    assert 'proc.args contains "WHOEXEC_IDENTITY="' in rules[0]["condition"]


def test_fixture_alerts_carry_only_fields_falco_would_send():
    import json

    (entry,) = [e for e in load("values.yaml")["falco"]["append_output"] if "match" in e]
    appended = set(entry["extra_fields"])
    rule_fields = {
        "fd.name",
        "user.loginuid",
        "user.name",
        "proc.tty",
        "evt.time.iso8601",
        "proc.env",
    }
    for path in (Path(__file__).parent / "data" / "falco").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            fields = set(json.loads(line)["output_fields"])
            assert fields <= appended | rule_fields, (path.name, fields - appended - rule_fields)


def test_the_charts_default_output_tail_is_kept_beside_ours():
    # Helm replaces lists: without this entry every stock rule loses its
    # container_id=... k8s_pod_name=... tail, and users' alert text changes
    assert {"suggested_output": True} in load("values.yaml")["falco"]["append_output"]


def test_rules_and_consumer_share_one_runtime_parent_list_falco_can_match():
    from webhook.attribution.falco import RUNTIME_PARENTS

    (listed,) = [
        i for i in load("whoexec_rules.yaml") if i.get("list") == "whoexec_runtime_parents"
    ]
    assert set(listed["items"]) == RUNTIME_PARENTS
    # proc.pname is the kernel's comm: 15 characters at most
    assert all(len(name) <= 15 for name in RUNTIME_PARENTS)


def test_root_rules_fire_only_on_a_successful_exec():
    for rule in (i for i in load("whoexec_rules.yaml") if "rule" in i):
        assert "evt.res = SUCCESS" in rule["condition"], rule["rule"]
        assert "evt.dir" not in rule["condition"], rule["rule"]


def test_an_entry_is_found_without_pid_1_and_without_a_parent_name():
    # kubectl debug --target shares the target's PID namespace (no vpid 1), and runc has
    # often exited by the time Falco reports the process (proc.pname null): the exec entry
    # rule takes both, as the consumer's ProcessFacts.is_container_entry does
    rules = {i.get("rule") or i.get("macro"): i for i in load("whoexec_rules.yaml")}
    runtime = " ".join(rules["whoexec_started_by_runtime"]["condition"].split())
    assert "not proc.pname exists" in runtime
    assert "proc.pname in (whoexec_runtime_parents)" in runtime
    entry = rules["Whoexec exec entry"]["condition"]
    assert "whoexec_started_by_runtime" in entry and "proc.vpid != 1" in entry


def test_exe_is_a_runtime_parent_only_when_its_executable_is_runc():
    from webhook.attribution.falco import RUNTIME_PARENTS, is_runtime_parent

    rules = {i.get("macro"): i for i in load("whoexec_rules.yaml") if "macro" in i}
    runtime = " ".join(rules["whoexec_started_by_runtime"]["condition"].split())
    assert "(proc.pname = exe and proc.pexepath contains runc)" in runtime
    assert "exe" not in RUNTIME_PARENTS
    assert is_runtime_parent("exe", "/usr/bin/runc")
    assert is_runtime_parent("exe", "memfd:runc_cloned:/proc/self/exe (deleted)")
    assert not is_runtime_parent("exe", "/.whoexec/env"), "the BusyBox static env's applets"
    assert not is_runtime_parent("exe", "/bin/sh"), "a BusyBox image's shell"
    assert not is_runtime_parent("exe", None), "an older append_output without proc.pexepath"
