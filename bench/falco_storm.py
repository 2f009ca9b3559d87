"""Real Falco's events per second, drops and CPU on the same syscall storm, with whoexec's
plugin (``plugin/``, ``libwhoexec.so``) loaded beside the container plugin and without it
(issue #24: the goal is >= 0.95x the events per second of Falco without it, and no added
drops).

No registry serves Falco, so this needs a Falco you built (>= 0.41, plugin API >= 3.11);
nothing of Falco's is in this repository. Without ``WHOEXEC_BENCH_FALCO`` it says so and
exits 0.

    WHOEXEC_BENCH_FALCO=/path/to/falco \\
    WHOEXEC_BENCH_FALCO_RULES=/path/to/falco_rules.yaml \\
    WHOEXEC_BENCH_CONTAINER_PLUGIN=/path/to/libcontainer.so \\
      python bench/falco_storm.py [--seconds 15] [--repeats 3] [--storm openclose --storm forkexec]

Optional: ``WHOEXEC_BENCH_PLUGIN`` (default ``plugin/target/release/libwhoexec.so``: run
``cargo build --release`` in ``plugin/`` first), ``WHOEXEC_BENCH_FALCO_ENGINE``
(``modern_ebpf``). Falco runs as root; its environment is this script's (so an
``LD_PRELOAD`` that Falco needs on your machine goes on this command line).

Each round starts Falco afresh once without the plugin and once with it (the order
alternates between rounds), waits until it captures, runs the storm for ``--seconds``, and
reads Falco's own metrics (``metrics.output_file``, one snapshot a second):
``scap.n_evts`` and ``scap.n_drops`` between the first and the last snapshot inside the
storm, and Falco's CPU time (``/proc/<pid>/stat``) over the same span. Both configurations
load the same stock rules and ``manifests/falco/whoexec_rules.yaml``; the plugin's adds
``whoexec_plugin_rules.yaml`` and ``rule_matching: all`` (as ``values-plugin.yaml``).

The storms run on the host under ``env WHOEXEC_IDENTITY=<token>``, a token signed by a
key the plugin is given, so the plugin learns a session root and tags every process and
thread of the storm (it is not a Kubernetes container: the session is ``unverified``,
"binding unknown"). ``openclose``: one process opening, reading and closing a file in a
tight loop (events every rule of the open family looks at).
``--procs`` storms run at once (default 1), niced, so that Falco keeps its priority.
``evts/s`` is what Falco read: ``scap.n_evts`` minus ``scap.n_drops``. ``forkexec``: a shell that
runs ``/bin/true`` in a loop (clone, execve and exit: the events the plugin parses).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from webhook.identity import Identity, Signer, sign_identity  # noqa: E402

STORMS = {
    "openclose": [
        sys.executable,
        "-c",
        "import os\nwhile True:\n    fd = os.open('/etc/hostname', os.O_RDONLY)\n"
        "    os.read(fd, 64)\n    os.close(fd)\n",
    ],
    "forkexec": ["/bin/sh", "-c", "while :; do /bin/true; done"],
}
TICK = os.sysconf("SC_CLK_TCK")

#: ``--reference-rule``: whoexec_plugin_rules.yaml's rule with its ``whoexec.*`` terms
#: taken out, which Falco without the plugin can load: the same open-family rule on both
#: sides, so that the ratio is the plugin's own cost and not that of one more rule
REFERENCE_RULE = """
- list: whoexec_sensitive_file_names
  items: [/etc/shadow, /etc/gshadow, /etc/sudoers, /etc/pam.conf, /etc/security/pwquality.conf]
- macro: whoexec_open_read
  condition: >
    evt.type in (open, openat, openat2) and evt.is_open_read = true and fd.typechar = 'f'
    and fd.num >= 0
- rule: Sensitive file read (reference, no whoexec fields)
  desc: the example rule of whoexec_plugin_rules.yaml without its whoexec terms
  condition: whoexec_open_read and fd.name in (whoexec_sensitive_file_names)
  output: Sensitive file %fd.name read (process=%proc.name command=%proc.cmdline)
  priority: WARNING
"""


def config(
    tmp: Path,
    *,
    plugin: Path | None,
    pub: Path,
    metrics: Path,
    plugin_rules: bool = True,
    reference_rule: bool = False,
) -> Path:
    rules = [
        os.environ["WHOEXEC_BENCH_FALCO_RULES"],
        str(ROOT / "manifests/falco/whoexec_rules.yaml"),
    ]
    reference = plugin is None and reference_rule
    if reference:
        (tmp / "reference_rule.yaml").write_text(REFERENCE_RULE)
        rules.append(str(tmp / "reference_rule.yaml"))
    engines = {
        name: {"enabled": False}
        for name in ("docker", "podman", "containerd", "cri", "lxc", "libvirt_lxc", "bpm")
    }
    plugins: list[dict[str, Any]] = [
        {
            "name": "container",
            "library_path": os.environ["WHOEXEC_BENCH_CONTAINER_PLUGIN"],
            "init_config": {"engines": engines},
        }
    ]
    cfg: dict[str, Any] = {
        "engine": {"kind": os.environ.get("WHOEXEC_BENCH_FALCO_ENGINE", "modern_ebpf")},
        "rules_files": rules,
        "load_plugins": ["container"],
        "plugins": plugins,
        "json_output": True,
        "priority": "debug",
        "stdout_output": {"enabled": False},
        "syslog_output": {"enabled": False},
        "file_output": {"enabled": True, "keep_alive": True, "filename": str(tmp / "alerts.jsonl")},
        "webserver": {"enabled": False},
        "log_stderr": True,
        "metrics": {
            "enabled": True,
            "interval": "1s",
            "output_rule": False,
            "output_file": str(metrics),
            "kernel_event_counters_enabled": True,
            "resource_utilization_enabled": True,
            "state_counters_enabled": True,
            "plugins_metrics_enabled": True,
            "rules_counters_enabled": False,
            "libbpf_stats_enabled": False,
        },
    }
    if reference:
        cfg["rule_matching"] = "all"
    if plugin is not None:
        cfg["load_plugins"].append("whoexec")
        plugins.append(
            {
                "name": "whoexec",
                "library_path": str(plugin),
                "init_config": {"public_key_files": [str(pub)]},
            }
        )
        if plugin_rules:
            rules.append(str(ROOT / "manifests/falco/whoexec_plugin_rules.yaml"))
            cfg["rule_matching"] = "all"
    path = tmp / "falco.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def snapshots(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        out.append(record.get("output_fields", record))
    return out


def stop(gens: list[subprocess.Popen[bytes]]) -> None:
    for gen in gens:
        if gen.poll() is None:
            os.killpg(gen.pid, signal.SIGKILL)
            gen.wait()


def one_run(
    storm: str,
    plugin: Path | None,
    pub: Path,
    tokens: list[str],
    seconds: float,
    plugin_rules: bool = True,
    reference_rule: bool = False,
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="whoexec-falco-bench."))
    metrics = tmp / "metrics.jsonl"
    cfg = config(
        tmp,
        plugin=plugin,
        pub=pub,
        metrics=metrics,
        plugin_rules=plugin_rules,
        reference_rule=reference_rule,
    )
    log = (tmp / "falco.log").open("wb")
    falco = subprocess.Popen(
        [os.environ["WHOEXEC_BENCH_FALCO"], "-c", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    gens: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 120
        while len(snapshots(metrics)) < 3:  # capturing, and a second of quiet behind it
            if falco.poll() is not None or time.monotonic() > deadline:
                tail = (tmp / "falco.log").read_text()[-600:]
                raise RuntimeError(f"falco did not start: ...{tail}")
            time.sleep(0.2)
        before = snapshots(metrics)[-1]
        samples: list[tuple[int, float]] = []
        gens += [
            subprocess.Popen(
                # niced: Falco, the system measured, keeps its priority
                ["nice", "-n", "10", "env", f"WHOEXEC_IDENTITY={token}", *STORMS[storm]],
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
            for token in tokens
        ]
        end = time.monotonic() + seconds
        seen = len(snapshots(metrics))
        while time.monotonic() < end:
            time.sleep(0.05)
            now = len(snapshots(metrics))
            if now != seen:  # a snapshot was just written: CPU time at about that moment
                seen = now
                samples.append((now, cpu_seconds(falco.pid)))
        stop(gens)
        time.sleep(2.5)
        every = snapshots(metrics)
        after = every[-1]
    finally:
        stop(gens)
        falco.send_signal(signal.SIGTERM)
        try:
            falco.wait(30)
        except subprocess.TimeoutExpired:
            falco.kill()
            falco.wait()
        log.close()
    # the snapshots strictly inside the storm: drop the first one after its start (partly idle)
    inside = [(count, cpu) for count, cpu in samples[1:]]
    first_n, first_cpu = inside[0]
    last_n, last_cpu = inside[-1]
    a, b = every[first_n - 1], every[last_n - 1]
    span = (b["evt.time"] - a["evt.time"]) / 1e9
    # what Falco read from the driver: captured, minus what the ring buffers dropped
    events = (b["scap.n_evts"] - b["scap.n_drops"]) - (a["scap.n_evts"] - a["scap.n_drops"])
    result = {
        "storm": storm,
        "plugin": plugin is not None,
        "seconds": span,
        "evts_per_s": events / span,
        "drops": after["scap.n_drops"] - before["scap.n_drops"],
        "falco_cpu_per_s": (last_cpu - first_cpu) / span,
        "cpu_us_per_evt": 1e6 * (last_cpu - first_cpu) / max(events, 1),
        "plugin_metrics": {
            k: v for k, v in after.items() if not k.startswith(("falco.", "scap.", "evt."))
        },
    }
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def with_retries(
    storm: str,
    plugin: Path | None,
    pub: Path,
    tokens: list[str],
    seconds: float,
    plugin_rules: bool = True,
    reference_rule: bool = False,
) -> dict[str, Any]:
    """A run, again when Falco failed to start: on a busy machine the kernel sometimes
    refuses to load a BPF program with EAGAIN, and the next start loads it."""
    for attempt in range(6):
        try:
            return one_run(storm, plugin, pub, tokens, seconds, plugin_rules, reference_rule)
        except RuntimeError as exc:
            if attempt == 5:
                raise
            print(f"retrying: {str(exc).splitlines()[0]}", file=sys.stderr)
            time.sleep(10)
    raise AssertionError("unreachable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--storm", action="append", choices=sorted(STORMS))
    parser.add_argument(
        "--procs",
        type=int,
        default=2,
        help="Storm processes at once (one per core: Falco competes).",
    )
    parser.add_argument(
        "--no-plugin-rules",
        action="store_true",
        help="Load the plugin without whoexec_plugin_rules.yaml and rule_matching: all.",
    )
    parser.add_argument(
        "--reference-rule",
        action="store_true",
        help="Without the plugin, load its example rule minus the whoexec terms "
        "(and rule_matching: all): one more open rule on both sides.",
    )
    parser.add_argument("--json", type=Path, help="Also write every run here.")
    args = parser.parse_args()
    # a SIGTERM ends the runs through their `finally`: no Falco or storm is left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if not os.environ.get("WHOEXEC_BENCH_FALCO"):
        print("skipped: set WHOEXEC_BENCH_FALCO to a Falco binary (>= 0.41) to run this benchmark")
        return 0
    for var in ("WHOEXEC_BENCH_FALCO_RULES", "WHOEXEC_BENCH_CONTAINER_PLUGIN"):
        if not os.environ.get(var):
            print(f"{var} is needed with WHOEXEC_BENCH_FALCO", file=sys.stderr)
            return 2
    if os.geteuid() != 0:
        print("Falco needs root (BPF)", file=sys.stderr)
        return 2
    plugin = Path(
        os.environ.get("WHOEXEC_BENCH_PLUGIN", ROOT / "plugin/target/release/libwhoexec.so")
    )
    if not plugin.exists():
        print(f"no plugin at {plugin}: cargo build --release in plugin/", file=sys.stderr)
        return 2
    key = Ed25519PrivateKey.generate()
    keydir = Path(tempfile.mkdtemp(prefix="whoexec-bench-key."))
    pub = keydir / "identity.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    runs: list[dict[str, Any]] = []
    for storm in args.storm or ["openclose", "forkexec"]:
        for round_ in range(args.repeats):
            order = [None, plugin] if round_ % 2 == 0 else [plugin, None]
            for which in order:
                # fresh tokens each run, one per storm process: each is a session root
                tokens = [
                    sign_identity(
                        Identity(
                            f"bench-{storm}-{round_}-{which is not None}-{n}",
                            "bench",
                            "",
                            ("bench",),
                            "bench",
                            "bench",
                            "bench",
                            int(time.time()),
                        ),
                        Signer(key),
                    )
                    for n in range(args.procs)
                ]
                result = with_retries(
                    storm,
                    which,
                    pub,
                    tokens,
                    args.seconds,
                    not args.no_plugin_rules,
                    args.reference_rule,
                )
                runs.append(result)
                print(
                    f"{storm:9} {'plugin' if which else 'without':7} "
                    f"{result['evts_per_s']:>12,.0f} evts/s "
                    f"drops {result['drops']:>6} falco cpu {result['falco_cpu_per_s']:.2f} "
                    f"{result['cpu_us_per_evt']:.2f} us/evt",
                    flush=True,
                )
    print()
    print(
        "| storm | evts/s without | evts/s with plugin | ratio | drops without / with "
        "| Falco CPU us/evt without / with |"
    )
    print("|---|---|---|---|---|---|")
    for storm in args.storm or ["openclose", "forkexec"]:
        base = [r for r in runs if r["storm"] == storm and not r["plugin"]]
        with_ = [r for r in runs if r["storm"] == storm and r["plugin"]]
        m0 = statistics.median(r["evts_per_s"] for r in base)
        m1 = statistics.median(r["evts_per_s"] for r in with_)
        print(
            f"| {storm} | {m0:,.0f} | {m1:,.0f} | {m1 / m0:.3f}x | "
            f"{statistics.median(r['drops'] for r in base):,.0f} / "
            f"{statistics.median(r['drops'] for r in with_):,.0f} | "
            f"{statistics.median(r['cpu_us_per_evt'] for r in base):.2f} / "
            f"{statistics.median(r['cpu_us_per_evt'] for r in with_):.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    shutil.rmtree(keydir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
