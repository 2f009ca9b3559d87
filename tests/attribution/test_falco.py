"""Reading Falco's output: real Falco 0.44.1 alerts, and every malformed shape refused."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.conftest import DATA
from webhook.attribution.falco import (
    check_alert,
    format_time_ns,
    is_whoexec_rule,
    parse_alert,
    parse_time_ns,
    process_facts,
    render_json,
    shallow_text,
    token_pattern,
)
from webhook.errors import MalformedAlert

REAL = DATA / "falco-0.44.1"
REAL_LINES = [
    (path.name, number, line)
    for path in sorted(REAL.glob("*.jsonl"))
    for number, line in enumerate(path.read_bytes().splitlines(), 1)
]
VARIABLE = "WHOEXEC_IDENTITY"
PATTERN = token_pattern(VARIABLE)


def facts_of(line: bytes) -> dict:
    facts = process_facts(parse_alert(line), VARIABLE, PATTERN)
    row = dataclasses.asdict(facts)
    row["ancestors"] = [list(pair) for pair in facts.ancestors]
    row["in_container"] = facts.in_container
    row["is_container_entry"] = facts.is_container_entry
    return row


FACTS = json.loads((REAL / "facts.json").read_text())


@pytest.mark.parametrize(
    ("name", "number", "line"), REAL_LINES, ids=[f"{n}:{i}" for n, i, _ in REAL_LINES]
)
def test_every_real_falco_alert_parses_and_yields_the_reviewed_facts(name, number, line):
    alert = parse_alert(line)
    assert parse_time_ns(alert["time"]) > 0
    assert facts_of(line) == FACTS[f"{name}:{number}"]


def test_real_falco_shapes_the_parser_relies_on():
    alerts = [parse_alert(line) for _, _, line in REAL_LINES]
    for alert in alerts:
        keys = list(alert["output_fields"])
        assert keys == sorted(keys), "Falco prints output_fields sorted, brackets and all"
        assert isinstance(alert["output_fields"]["evt.time"], int)
        assert alert["output_fields"][f"proc.aenv[{VARIABLE}]"] is not None, "'' when absent"
    # an absent variable is "" in real output and no token in the facts
    root = facts_of(REAL_LINES[0][2])
    assert (root["token_in_env"], root["token_in_ancestor_env"]) == (None, None)


def test_a_worker_thread_s_alert_does_not_pass_its_clone_time_as_the_process_start():
    # run 2: pid 19784's alert from thread 19825 carries the thread's proc.pid.ts
    by_thread = {
        (a["output_fields"]["proc.pid"], a["output_fields"].get("thread.tid")): a
        for a in (parse_alert(line) for _, _, line in REAL_LINES)
        if a["rule"] == "Read sensitive file untrusted"
    }
    thread = process_facts(by_thread[(19784, 19825)], VARIABLE, PATTERN)
    main = process_facts(by_thread[(19784, 19784)], VARIABLE, PATTERN)
    assert thread.start_ts is None
    assert main.start_ts == by_thread[(19784, 19784)]["output_fields"]["proc.pid.ts"]


def test_the_session_root_s_token_is_read_from_its_argv_only_in_the_real_token_form():
    pattern = token_pattern(VARIABLE)
    token = "v1.0123456789abcdef.eyJzaWQiOiJ4In0.c2ln"
    assert pattern.search(f"{VARIABLE}={token} sh").group(1) == token  # type: ignore[union-attr]
    assert pattern.search(f"env {VARIABLE}={token} sh").group(1) == token  # type: ignore[union-attr]
    for text in (
        f"X{VARIABLE}={token}",  # another variable that ends with the name
        f"{VARIABLE}=v1.test.abc.def",  # the captures' placeholders are not tokens
        f"{VARIABLE}=v1.0123456789ABCDEF.a.b",  # the key id is lower-case hex
        f"echo '{VARIABLE}={token}'",  # quoted: an argument, not an assignment
    ):
        assert pattern.search(text) is None, text


T = "2026-11-22T10:00:00Z"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "a Falco alert is a JSON object, got list"),
        ({"time": T, "output_fields": {}, "source": "s"}, "'rule' must be str"),
        ({"rule": "r", "output_fields": {}, "source": "s"}, "'time' must be str, got NoneType"),
        ({"rule": "r", "time": T, "source": "s"}, "'output_fields' must be dict"),
        ({"rule": "r", "time": T, "output_fields": {}}, "'source' must be str"),
        ({"rule": 1, "time": T, "output_fields": {}, "source": "s"}, "'rule' must be str, got int"),
    ],
    ids=["not-object", "rule", "time", "output_fields", "source", "rule-type"],
)
def test_an_alert_missing_a_field_is_refused_naming_it(data, message):
    with pytest.raises(MalformedAlert, match=message):
        check_alert(data)


GOOD = {"rule": "r", "time": "2026-11-22T10:00:00Z", "output_fields": {}, "source": "syscall"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"output": 1}, "field 'output' must be str"),
        ({"priority": None}, "field 'priority' must be str"),
        ({"hostname": ["a"]}, "field 'hostname' must be str"),
        ({"tags": "whoexec"}, "^field 'tags' must be a list$"),
        ({"time": "yesterday"}, "^time 'yesterday' is not RFC 3339$"),
        ({"time": "2026-02-30T00:00:00Z"}, "^time '2026-02-30T00:00:00Z' is not a valid date$"),
        # a hostile value is shown cut to its first 40 characters
        ({"time": "y" * 500}, "^time '" + "y" * 40 + "' is not RFC 3339$"),
    ],
)  # fmt: skip
def test_an_optional_field_of_the_wrong_type_is_refused(extra, message):
    with pytest.raises(MalformedAlert, match=message):
        check_alert({**GOOD, **extra})


def test_an_alert_without_a_hostname_is_keyed_under_the_empty_host():
    alert = check_alert(
        {k: v for k, v in alert_with(**{"proc.pid": 10}).items() if k != "hostname"}
    )
    assert process_facts(alert, VARIABLE, PATTERN).host == ""


def test_a_well_formed_alert_is_returned_as_it_is():
    assert check_alert({**GOOD, "output": "o", "tags": ["a"], "hostname": "h"})["tags"] == ["a"]
    with pytest.raises(MalformedAlert, match="not JSON"):
        parse_alert(b"{")


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:01.5Z", 1_500_000_000),
        ("2026-11-22T10:00:00.000000001Z", 1795341600_000_000_001),
        ("2026-11-22T12:00:00.123456789+02:00", 1795341600_123_456_789),
        ("2026-11-22T08:30:00-01:30", 1795341600_000_000_000),
    ],
)
def test_rfc3339_times_with_any_fraction_and_offset(text, ns):
    assert parse_time_ns(text) == ns


@pytest.mark.parametrize(
    "text",
    ["2026-11-22 10:00:00Z", "2026-11-22T10:00:00", "2026-11-22T10:00:00.1234567890Z", ""],
)
def test_times_that_are_not_rfc3339_are_refused(text):
    with pytest.raises(MalformedAlert, match="is not RFC 3339"):
        parse_time_ns(text)


def test_times_print_as_falco_prints_them():
    assert format_time_ns(1795341600_000_000_001) == "2026-11-22T10:00:00.000000001Z"
    assert format_time_ns(0) == "1970-01-01T00:00:00.000000000Z"


def test_whoexec_rules_are_known_by_their_tag_and_json_keys_come_out_sorted():
    assert is_whoexec_rule({**GOOD, "tags": ["whoexec", "x"]})  # type: ignore[arg-type]
    assert not is_whoexec_rule({**GOOD, "tags": ["x"]})  # type: ignore[arg-type]
    assert not is_whoexec_rule(GOOD)  # type: ignore[arg-type]
    assert render_json({"b": 1, "a": {"d": 2, "c": 3}}) == b'{"a":{"c":3,"d":2},"b":1}'


TOKEN = "v1.0123456789abcdef.eyJzaWQiOiJ4In0.c2ln"


def alert_with(**fields) -> dict:
    return {**GOOD, "hostname": "node-a", "output_fields": fields}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # an older append_output without proc.apid[N]: the parent from proc.ppid and pname
        ({"proc.pid": 10, "proc.ppid": 9, "proc.pname": "sh"},
         {"ppid": 9, "parent_name": "sh", "ancestors": ((9, "sh"),)}),
        # proc.ppid and proc.pname absent: the parent is the first ancestor
        ({"proc.pid": 10, "proc.apid[1]": 9, "proc.aname[1]": "bash", "proc.apid[2]": 1},
         {"ppid": 9, "parent_name": "bash", "ancestors": ((9, "bash"), (1, None))}),
        # no append_output at all: a stock rule's own output names the parent by name only
        ({"proc.pid": 10, "proc.pname": "bash"},
         {"ppid": None, "parent_name": "bash", "ancestors": ()}),
        # init (pid 1) is an ancestor; pid 0 ends the chain
        ({"proc.pid": 10, "proc.apid[1]": 1, "proc.apid[2]": 0, "proc.apid[3]": 5},
         {"ancestors": ((1, None),)}),
        # eight ancestors at most, as append_output asks for (a ninth is not read)
        ({"proc.pid": 10, **{f"proc.apid[{n}]": 100 + n for n in range(1, 10)}},
         {"ancestors": tuple((100 + n, None) for n in range(1, 9))}),
        # older Falco printed numbers as strings and absent values as <NA>
        ({"proc.pid": "10", "proc.ppid": "9", "proc.pname": "<NA>", "k8s.ns.name": "<NA>"},
         {"pid": 10, "ppid": 9, "parent_name": None, "namespace": None}),
        # the whole environment (proc.env) when proc.env[VAR] is not asked for
        ({"proc.pid": 10, "proc.env": f"HOME=/root WHOEXEC_IDENTITY={TOKEN} TERM=xterm"},
         {"token_in_env": TOKEN}),
        # proc.env[VAR] wins over the whole environment
        ({"proc.pid": 10, "proc.env[WHOEXEC_IDENTITY]": "set-by-hand",
          "proc.env": f"WHOEXEC_IDENTITY={TOKEN}"},
         {"token_in_env": "set-by-hand"}),
        # the token in argv (the env execve), in proc.args or else in proc.cmdline
        ({"proc.pid": 10, "proc.args": f"WHOEXEC_IDENTITY={TOKEN} sh"},
         {"token_in_args": TOKEN}),
        ({"proc.pid": 10, "proc.cmdline": f"env WHOEXEC_IDENTITY={TOKEN} sh"},
         {"token_in_args": TOKEN}),
        # the event time: evt.time, else evt.time.iso8601, else the alert's time
        ({"proc.pid": 10, "evt.time.iso8601": "2026-11-22T10:00:01.5Z"},
         {"time_ns": 1795341601_500_000_000}),
        ({"proc.pid": 10}, {"time_ns": 1795341600_000_000_000}),
        ({"proc.pid": 10, "evt.time": 7, "evt.time.iso8601": "2026-11-22T10:00:01Z"},
         {"time_ns": 7}),
        # a thread's proc.pid.ts is its clone time, not the process start
        ({"proc.pid": 10, "thread.tid": 11, "proc.pid.ts": 5}, {"start_ts": None}),
        ({"proc.pid": 10, "thread.tid": 10, "proc.pid.ts": 5}, {"start_ts": 5}),
        ({"proc.pid": 10, "proc.pid.ts": 5}, {"start_ts": 5}),  # no thread.tid: taken as is
    ],
    ids=[
        "ppid-only", "apid-only", "pname-only", "init-and-zero", "eight-ancestors", "old-strings",
        "whole-env", "env-var-wins", "args", "cmdline", "iso-time", "alert-time",
        "evt-time-first", "thread", "main-thread", "no-tid",
    ],
)  # fmt: skip
def test_process_facts_read_every_shape_falco_has_printed(fields, expected):
    facts = process_facts(check_alert(alert_with(**fields)), VARIABLE, PATTERN)
    assert {key: getattr(facts, key) for key in expected} == expected


def test_times_print_in_utc_whatever_the_machine_s_zone(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert format_time_ns(1795341600_000_000_001) == "2026-11-22T10:00:00.000000001Z"
    finally:
        monkeypatch.undo()
        time.tzset()


LABEL = "container.label[io.kubernetes.container.name]"


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        # the CRI engine names a container by its Kubernetes name
        ({"container.id": "7dafe0d0b51c", "container.name": "app"}, "app"),
        # the containerd engine (containerd < 1.7, created after Falco started) by its id:
        # that says nothing of the Kubernetes name
        ({"container.id": "44d266bd8160", "container.name": "44d266bd8160"}, None),
        ({"container.id": "44d266bd8160", "container.name": "44d266bd8160" + "ab" * 26}, None),
        # the kubelet's label is the Kubernetes name, whatever container.name says
        ({"container.id": "44d266bd8160", "container.name": "44d266bd8160", LABEL: "app"}, "app"),
        ({"container.id": "7dafe0d0b51c", "container.name": "other", LABEL: "app"}, "app"),
        # a Kubernetes name may look like hex: only the container's own id is unknown
        ({"container.id": "7dafe0d0b51c", "container.name": "deadbeef0123"}, "deadbeef0123"),
        # no worker in the container plugin: nothing at all
        ({"container.id": "7dafe0d0b51c", "container.name": None, LABEL: None}, None),
        ({"container.id": "7dafe0d0b51c", "container.name": "<NA>", LABEL: ""}, None),
    ],
    ids=["cri-name", "containerd-id", "full-id", "label-over-id", "label-wins", "hex-name",
         "nulls", "na-and-empty"],
)  # fmt: skip
def test_the_kubernetes_container_name_is_the_label_or_a_name_that_is_not_the_id(fields, name):
    facts = process_facts(check_alert(alert_with(**{"proc.pid": 10, **fields})), VARIABLE, PATTERN)
    assert facts.container_name == name


IN_A_CONTAINER = {"proc.pid": 1165, "proc.vpid": 106, "container.id": "7dafe0d0b51c"}


@pytest.mark.parametrize(
    ("fields", "entry"),
    [
        ({"proc.pname": "runc"}, True),
        ({"proc.pname": "containerd-shim"}, True),
        ({"proc.pname": "runc:[2:INIT]"}, True),
        # runc exited before Falco reported the process: Falco names no parent
        ({"proc.pname": None, "proc.ppid": None}, True),
        ({"proc.pname": "<NA>"}, True),
        # runc re-executed through /proc/self/exe is named exe; so is a BusyBox applet
        ({"proc.pname": "exe", "proc.pexepath": "/usr/bin/runc"}, True),
        ({"proc.pname": "exe", "proc.pexepath": "/.whoexec/env"}, False),
        ({"proc.pname": "exe", "proc.pexepath": "/bin/sh"}, False),
        ({"proc.pname": "exe"}, False),
        ({"proc.pname": "bash"}, False),
        # an alert without proc.pname at all (an older append_output) says nothing of it
        ({}, False),
        # the container's pid 1 is no exec, and a process outside containers is none
        ({"proc.pname": None, "proc.vpid": 1}, False),
        ({"proc.pname": "runc", "container.id": "host"}, False),
    ],
    ids=["runc", "shim", "runc-init", "parent-exited", "parent-na", "exe-runc", "exe-busybox-env",
         "exe-busybox-image", "exe-no-path", "shell", "no-pname-field", "pid-1", "host"],
)  # fmt: skip
def test_a_container_entry_is_started_by_the_runtime_named_or_not(fields, entry):
    facts = process_facts(
        check_alert(alert_with(**{**IN_A_CONTAINER, **fields})), VARIABLE, PATTERN
    )
    assert facts.is_container_entry is entry


@pytest.mark.parametrize(
    ("value", "read"),
    [
        (2**63 - 1, 2**63 - 1),  # the largest a 64-bit field holds
        (2**63, None),  # past it: counted as absent, never stored as a number SQL refuses
        (-(2**63), -(2**63)),
        (-(2**63) - 1, None),
        (-1000, -1000),
        ("123456789012345678", 123456789012345678),  # older Falco's strings: 18 digits fit
        ("1234567890123456789", None),  # 19 digits may not: absent
        (True, None),  # JSON's true is not 1
    ],
)  # fmt: skip
def test_a_number_is_read_only_within_64_bits(value, read):
    facts = process_facts(
        check_alert(alert_with(**{"proc.pid": 10, "proc.vpid": value})), VARIABLE, PATTERN
    )
    assert facts.vpid == read


def test_an_alert_is_walked_for_its_depth_unless_its_text_was_counted_shallow():
    deep: object = {}
    for _ in range(40):
        deep = {"x": deep}
    alert = alert_with(**{"proc.pid": 10, "deep": deep})
    with pytest.raises(MalformedAlert, match=r"^an alert nests at most 32 levels deep$"):
        check_alert(alert)
    assert check_alert(alert, shallow=True) is alert, "the caller vouches for its text"


@pytest.mark.parametrize(
    ("text", "shallow"),
    [
        ("[" * 32, True),
        ("[" * 33, False),
        ("{" * 33, False),
        ("[" * 16 + "{" * 16, True),
        ("[" * 16 + "{" * 16 + "[", False),  # both kinds count, together
        ('{"a": "[[[[' + "x" * 10 + '"}', True),
    ],
)
def test_a_text_with_at_most_32_opening_brackets_is_shallow_as_str_and_as_bytes(text, shallow):
    assert shallow_text(text) is shallow
    assert shallow_text(text.encode()) is shallow


def test_a_uuid_that_is_not_a_string_is_refused_and_a_string_one_kept():
    with pytest.raises(MalformedAlert, match=r"^field 'uuid' must be str$"):
        check_alert({**GOOD, "uuid": 7})
    assert check_alert({**GOOD, "uuid": "6f1c"})["uuid"] == "6f1c"


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1677-09-21T00:12:43.145224192Z", -(2**63)),
        ("2262-04-11T23:47:16.854775807Z", 2**63 - 1),
    ],
)
def test_the_first_and_last_times_of_64_bit_nanoseconds_are_read(text, ns):
    assert parse_time_ns(text) == ns


@pytest.mark.parametrize(
    "text", ["1677-09-21T00:12:43.145224191Z", "2262-04-11T23:47:16.854775808Z"]
)
def test_a_time_one_nanosecond_outside_64_bits_is_refused_naming_the_range(text):
    with pytest.raises(MalformedAlert, match=r"is out of range \(1677 to 2262\)$"):
        parse_time_ns(text)
