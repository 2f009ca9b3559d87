"""Falco alerts: the JSON shape, parsing, and the facts the lineage walk needs.

Pure core: no IO. With ``json_output: true`` Falco (>= 0.37; 0.44 is current) prints one
object per alert, keys in alphabetical order::

    {"hostname": ..., "output": ..., "output_fields": {...}, "priority": ..., "rule": ...,
     "source": "syscall", "tags": [...], "time": "2026-11-22T10:00:00.123456789Z"}

``output_fields`` keeps types (numbers are numbers, missing values are ``null``) and its
keys are the literal field names, brackets included (``"proc.apid[2]"``). Falcosidekick
adds ``uuid``. Internal messages have ``source: "internal"``.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import orjson

from webhook.errors import MalformedAlert

#: nanoseconds since the epoch that both databases can store (a signed 64-bit BIGINT):
#: 1677-09-21 to 2262-04-11. A time outside it is no time Falco ever printed.
MIN_NS, MAX_NS = -(2**63), 2**63 - 1
#: the deepest an alert may nest: Falco's nest 3 deep (``output_fields`` holds lists).
#: orjson reads 1,024 levels but writes only 254, so a deeper alert could be read and
#: then never be passed on, stored or even dead-lettered (issue 21)
MAX_DEPTH = 32
#: the deepest ancestor Falco's ``proc.apid[N]``/``proc.aname[N]`` can name (and that the
#: shipped ``append_output`` asks for)
MAX_ANCESTORS = 8
#: names of the container runtime processes that parent a container's entry processes,
#: as Falco's ``proc.pname`` shows them: the kernel's comm, cut to 15 characters (so
#: containerd-shim-runc-v2 appears as "containerd-shim"). The shipped rules' list
#: ``whoexec_runtime_parents`` is the same (tests/test_falco_manifests.py checks it).
#: ``exe`` is not in it: any program that re-executes itself through /proc/self/exe is
#: named so (BusyBox's applets, whoexec's earlier BusyBox static env), and only
#: runc's is a runtime (see :func:`is_runtime_parent`).
RUNTIME_PARENTS = frozenset(
    {
        "conmon",
        "containerd-shim",
        "crio",
        "crun",
        "docker-runc",
        "docker-runc-cur",
        "runc",
        "runc:[0:PARENT]",
        "runc:[1:CHILD]",
        "runc:[2:INIT]",
    }
)
#: the label the kubelet puts on every container it asks the runtime for, holding the
#: Kubernetes container name; the container plugin shows it as this field whatever
#: engine named the container (``container.name`` may be the container id, see
#: :func:`kubernetes_container_name`)
CONTAINER_NAME_LABEL = "container.label[io.kubernetes.container.name]"
#: the ``source`` of whoexec's own findings (Falco-shaped alerts it makes; never input)
FINDING_SOURCE = "whoexec"
#: tag of the shipped rules (``manifests/falco/whoexec_rules.yaml``): they teach the
#: consumer about sessions and are not security alerts
WHOEXEC_TAG = "whoexec"
#: every output field the consumer reads; ``manifests/falco/values.yaml`` appends them all
#: to every syscall rule (``append_output``), with the identity variable substituted
LINEAGE_FIELDS = (
    "evt.time",
    "proc.pid",
    "proc.ppid",
    "proc.vpid",
    "thread.tid",
    "proc.pid.ts",
    "proc.name",
    "proc.pname",
    "proc.pexepath",
    "proc.args",
    "proc.cmdline",
    *(f"proc.{kind}[{n}]" for n in range(1, MAX_ANCESTORS + 1) for kind in ("apid", "aname")),
    "proc.env[{variable}]",
    "proc.aenv[{variable}]",
    "container.id",
    "container.name",
    CONTAINER_NAME_LABEL,
    "k8s.ns.name",
    "k8s.pod.name",
    "k8s.pod.uid",
)


class FalcoAlert(TypedDict):
    """One alert as Falco prints it with ``json_output: true``."""

    hostname: str
    output: str
    output_fields: dict[str, Any]
    priority: str
    rule: str
    source: str
    tags: list[str]
    time: str
    uuid: NotRequired[str]  # falcosidekick


@dataclass(frozen=True, slots=True)
class ProcessFacts:
    """What one alert says about its process and the lineage above it."""

    host: str
    time_ns: int
    pid: int | None
    ppid: int | None
    vpid: int | None
    #: the process's start, ns since the epoch: ``proc.pid.ts`` when the event came from
    #: the main thread. Falco's ``proc.pid.ts`` is the clone time of the *thread* that raised
    #: the event (see shared/falco-0.44.1, run 2), so a worker thread's alert carries a
    #: later value. Without ``thread.tid`` (an older append_output) it is taken as it is.
    start_ts: int | None
    name: str | None
    parent_name: str | None
    #: ``proc.pexepath``: tells runc re-executed as ``exe`` from any other ``exe``
    parent_exepath: str | None
    #: Falco was asked for ``proc.pname`` and had no value: the parent exited before the
    #: event (runc does, right after starting an exec's process) or was never seen
    parent_unknown: bool
    cmdline: str | None
    #: the alert's own ancestors: (pid, name) for proc.apid[1..N], parent first
    ancestors: tuple[tuple[int, str | None], ...]
    container_id: str | None
    #: the Kubernetes container name, None when Falco did not know it (see
    #: :func:`kubernetes_container_name`)
    container_name: str | None
    namespace: str | None
    pod: str | None
    pod_uid: str | None
    #: WHOEXEC_IDENTITY values seen on this process: in its argv (the env execve), in its
    #: own environment, and the nearest ancestor's (proc.aenv, a fallback only)
    token_in_args: str | None
    token_in_env: str | None
    token_in_ancestor_env: str | None

    @property
    def in_container(self) -> bool:
        return self.container_id not in (None, "", "host")

    @property
    def is_container_entry(self) -> bool:
        """Started by the container runtime and not the container's pid 1: an exec, or
        the first process of a ``kubectl debug --target`` container (which shares the
        target's PID namespace, so its vpid is not 1).

        A parent Falco cannot name counts too: runc exits right after it started the
        process, and libsinsp does not reparent a process to a reaper outside its PID
        namespace (``thread_manager.cpp``, ``find_new_reaper``), so an exec's process soon
        has no parent in Falco's eyes. A process whose parent inside the container exits
        is given that namespace's reaper instead. The stock rules' ``container_entrypoint``
        macro makes the same allowance (``not proc.pname exists``)."""
        return (
            self.in_container
            and self.vpid is not None
            and self.vpid != 1
            and (self.parent_unknown or is_runtime_parent(self.parent_name, self.parent_exepath))
        )


def is_runtime_parent(name: str | None, exepath: str | None) -> bool:
    """A container runtime's process, by Falco's name for it and its executable's path.
    runc re-executes itself through /proc/self/exe, so Falco may name it ``exe``; so does
    every BusyBox applet, and those are no runtime: an ``exe`` counts only when its path
    is runc's (``/usr/bin/runc``, ``/usr/sbin/runc``, ``memfd:runc_cloned:...``)."""
    if name in RUNTIME_PARENTS:
        return True
    return name == "exe" and exepath is not None and "runc" in exepath


#: a container id: Falco's ``container.id`` is its first 12 hex digits
_CONTAINER_ID = re.compile(r"[0-9a-f]{12,64}")


def kubernetes_container_name(fields: dict[str, Any]) -> str | None:
    """The Kubernetes name of the alert's container, or None when Falco did not know it.

    The kubelet's ``io.kubernetes.container.name`` label is the name wherever it is set.
    Without it, ``container.name`` is the Kubernetes name only when the container
    plugin's CRI engine named the container; its containerd engine names a container by
    its 12-digit id, and on containerd < 1.7 the CRI engine gets no events, so every
    container created after Falco started is named so (cluster-2026-12-03). A name that
    is the container's id says nothing about the Kubernetes name: unknown."""
    label = _str(fields, CONTAINER_NAME_LABEL)
    if label is not None:
        return label
    name = _str(fields, "container.name")
    if name is None:
        return None
    container_id = _str(fields, "container.id")
    if _CONTAINER_ID.fullmatch(name) and (
        container_id is None or name.startswith(container_id) or container_id.startswith(name)
    ):
        return None
    return name


def parse_alert(line: bytes | str) -> FalcoAlert:
    """Decode one JSON line into an alert; raises :class:`MalformedAlert` naming why."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise MalformedAlert(f"not JSON: {exc}") from None
    return check_alert(data)


_CONTAINERS = frozenset({dict, list})


def nests_deeper(value: object, limit: int) -> bool:
    """Whether ``value`` nests objects and arrays more than ``limit`` levels deep (a
    scalar is 0 deep, ``[]`` 1). Level by level, not recursion: any depth is answered.
    Decoded JSON holds exactly ``dict`` and ``list``; a level of scalars (an alert's
    ``output_fields``) is passed over at C speed."""
    level: list[Any] = [value] if type(value) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            if not _CONTAINERS.isdisjoint(map(type, children)):
                below.extend(child for child in children if type(child) in _CONTAINERS)
        level = below
    return False


def shallow_text(text: bytes | str) -> bool:
    """JSON text that cannot nest deeper than MAX_DEPTH: it has no more opening brackets
    than that, strings included (a count at C speed; Falco's field names hold a few)."""
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{") <= MAX_DEPTH
    return text.count("[") + text.count("{") <= MAX_DEPTH


def check_alert(data: object, *, shallow: bool = False) -> FalcoAlert:
    """``data`` as an alert, or :class:`MalformedAlert` naming why. ``shallow``: the text
    it was read from passed :func:`shallow_text`, so its depth needs no walk."""
    if not isinstance(data, dict):
        raise MalformedAlert(f"a Falco alert is a JSON object, got {type(data).__name__}")
    if not shallow and nests_deeper(data, MAX_DEPTH):
        raise MalformedAlert(f"an alert nests at most {MAX_DEPTH} levels deep")
    for key, kind in (("rule", str), ("time", str), ("output_fields", dict), ("source", str)):
        if not isinstance(data.get(key), kind):
            raise MalformedAlert(
                f"field {key!r} must be {kind.__name__}, got {type(data.get(key)).__name__}"
            )
    for key in ("output", "priority", "hostname"):
        if key in data and not isinstance(data[key], str):
            raise MalformedAlert(f"field {key!r} must be str")
    if "tags" in data and not isinstance(data["tags"], list):
        raise MalformedAlert("field 'tags' must be a list")
    if "uuid" in data and not isinstance(data["uuid"], str):
        raise MalformedAlert("field 'uuid' must be str")
    parse_time_ns(data["time"])  # every reader of an alert relies on it
    return data  # type: ignore[return-value]


def parse_time_ns(text: str) -> int:
    """RFC 3339 with nanoseconds (``2026-11-22T10:00:00.123456789Z``) to ns since the epoch."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text)
    if not match:
        raise MalformedAlert(f"time {text[:40]!r} is not RFC 3339")
    base, fraction, zone = match.groups()
    try:
        stamp = datetime.datetime.fromisoformat(base + zone)  # "Z" too, since Python 3.11
        seconds = int(stamp.timestamp())
    except (ValueError, OverflowError):  # the right shape, an impossible date: month 13
        raise MalformedAlert(f"time {text[:40]!r} is not a valid date") from None
    ns = seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))
    if not MIN_NS <= ns <= MAX_NS:
        raise MalformedAlert(f"time {text[:40]!r} is out of range (1677 to 2262)")
    return ns


def format_time_ns(ns: int) -> str:
    """Nanoseconds since the epoch as Falco prints ``time``: RFC 3339, UTC, 9 digits."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def _int(fields: dict[str, Any], key: str) -> int | None:
    value = fields.get(key)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        # no pid, time or start Falco prints is outside 64 bits; a value that is counts
        # as absent, like a value of the wrong type
        return value if -(2**63) <= value < 2**63 else None  # MIN_NS..MAX_NS, folded
    # older Falco printed some as strings (ASCII digits: str.isdigit() also takes "²")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


def _str(fields: dict[str, Any], key: str) -> str | None:
    value = fields.get(key)
    return value if isinstance(value, str) and value not in ("", "<NA>") else None


def token_pattern(variable: str) -> re.Pattern[str]:
    """``VAR=<v1 token>`` as a whole word in argv or an environment dump."""
    return re.compile(
        rf"(?:^|[\s\x00]){re.escape(variable)}=(v1\.[0-9a-f]{{16}}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)"
    )


def process_facts(alert: FalcoAlert, variable: str, pattern: re.Pattern[str]) -> ProcessFacts:
    """Extract lineage facts from an alert's ``output_fields``."""
    fields = alert["output_fields"]
    time_ns = _int(fields, "evt.time")
    if time_ns is None:
        iso = _str(fields, "evt.time.iso8601")
        time_ns = parse_time_ns(iso if iso else alert["time"])
    ancestors: list[tuple[int, str | None]] = []
    for n in range(1, MAX_ANCESTORS + 1):
        apid = _int(fields, f"proc.apid[{n}]")
        if apid is None or apid <= 0:
            break
        ancestors.append((apid, _str(fields, f"proc.aname[{n}]")))
    pid = _int(fields, "proc.pid")
    tid = _int(fields, "thread.tid")
    start_ts = _int(fields, "proc.pid.ts") if tid is None or tid == pid else None
    ppid = _int(fields, "proc.ppid")
    if not ancestors and ppid:
        ancestors.append((ppid, _str(fields, "proc.pname")))
    cmdline = _str(fields, "proc.cmdline")
    args = _str(fields, "proc.args")
    in_args = None
    for text in (args, cmdline):
        if text and (match := pattern.search(text)):
            in_args = match.group(1)
            break
    # proc.env[VAR] and proc.aenv[VAR] hold the bare value, whatever someone set it to
    in_env = _str(fields, f"proc.env[{variable}]")
    env = _str(fields, "proc.env") if in_env is None else None
    if env and (match := pattern.search(env)):
        in_env = match.group(1)
    parent_name = _str(fields, "proc.pname") or (ancestors[0][1] if ancestors else None)
    return ProcessFacts(
        host=alert.get("hostname", ""),
        time_ns=time_ns,
        pid=pid,
        ppid=ppid if ppid is not None else (ancestors[0][0] if ancestors else None),
        vpid=_int(fields, "proc.vpid"),
        start_ts=start_ts,
        name=_str(fields, "proc.name"),
        parent_name=parent_name,
        parent_exepath=_str(fields, "proc.pexepath"),
        parent_unknown=parent_name is None and "proc.pname" in fields,
        cmdline=cmdline,
        ancestors=tuple(ancestors),
        container_id=_str(fields, "container.id"),
        container_name=kubernetes_container_name(fields),
        namespace=_str(fields, "k8s.ns.name"),
        pod=_str(fields, "k8s.pod.name"),
        pod_uid=_str(fields, "k8s.pod.uid"),
        token_in_args=in_args,
        token_in_env=in_env,
        token_in_ancestor_env=_str(fields, f"proc.aenv[{variable}]"),
    )


def is_internal(alert: FalcoAlert) -> bool:
    return alert["source"] == "internal"


def is_whoexec_rule(alert: FalcoAlert) -> bool:
    """An alert of whoexec's own learning rules (session roots, exec entries)."""
    return WHOEXEC_TAG in alert.get("tags", [])


def render_json(alert: FalcoAlert | dict[str, Any]) -> bytes:
    """One JSON line, keys sorted as Falco prints them."""
    return orjson.dumps(alert, option=orjson.OPT_SORT_KEYS)
