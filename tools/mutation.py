"""Mutation testing of the core and the durability paths, with a score per module.

    python tools/mutation.py [--max-children 2] [--report bench/mutation.json]

Runs mutmut (configured in pyproject.toml, [tool.mutmut]: identity, admission, lineage,
falco, the spool and inbox acking, the store writer) over the unit tests of those
modules, then reports, per module, the mutants killed, the survivors by name, and the
score. mutmut keeps its state in mutants/ (ignored by git): a second run only retests
what changed. It is not part of .ci/run: see the README's development notes for how
long it takes.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = [sys.executable, "-m", "mutmut"]


def results() -> list[tuple[str, str]]:
    out = subprocess.run(
        [*MUTMUT, "results", "--all", "true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            rows.append((name, status))
    return rows


_STRING = re.compile(r"""[rbfRBF]{0,2}("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")
_GET_DEFAULT = re.compile(r"\.get\(([^,()]+)(?:,[^()]*)?\)")


def changed_lines(name: str) -> tuple[list[str], list[str]]:
    """The lines a mutant removes and adds (``mutmut show``)."""
    diff = subprocess.run(
        [*MUTMUT, "show", name], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.splitlines()
    body = [line for line in diff if not line.startswith(("---", "+++"))]
    removed = [line[1:].strip() for line in body if line.startswith("-")]
    added = [line[1:].strip() for line in body if line.startswith("+")]
    return removed, added


#: a literal used as a key, compared or matched is behaviour, not wording
_LITERAL_IS_DATA = re.compile(
    r"""(\.get\(|\[|==|!=|\bin\s*[(\[{]?|startswith\(|endswith\(|split\(|strip\(|join\()"""
    r"""\s*[rbf]?["']"""
)


def classify(status: str, removed: list[str], added: list[str]) -> str:
    """Why a mutant that was not killed is left, where a rule can tell; else "unexplained".

    - timeout: the mutant makes the suite hang; CI's time limit catches that.
    - text: only the wording inside a string literal changed (a message, a log line),
      where the literal is not a key, a comparison or a pattern; no test spells the
      whole text out, and the behaviour is the same.
    - get-default: only the default of a ``.get()`` changed. Equivalent where the key is
      always there by then (reviews and alerts are checked and normalised first); a rule
      cannot prove that, so these are listed apart, not claimed equivalent one by one.
    """
    if status == "timeout":
        return "timeout"
    if status != "survived" or len(removed) != len(added) or not removed:
        return "unexplained"
    pairs = list(zip(removed, added, strict=True))
    if all(
        _STRING.sub('""', a) == _STRING.sub('""', b) and not _LITERAL_IS_DATA.search(a)
        for a, b in pairs
    ):
        return "text"
    if all(_GET_DEFAULT.sub(r".get(\1)", a) == _GET_DEFAULT.sub(r".get(\1)", b) for a, b in pairs):
        return "get-default"
    return "unexplained"


def module_of(mutant: str) -> str:
    # webhook.lineage.x_freshness_problem__mutmut_3 -> webhook.lineage
    # webhook.consumer.xǁInboxReaderǁrun__mutmut_2 -> webhook.consumer
    head = mutant.split("__mutmut_")[0]
    parts = head.split(".")
    return ".".join(p for p in parts[:-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--report", type=Path, default=None, help="also write the report here")
    parser.add_argument(
        "--report-only", action="store_true", help="report on the last run, without running"
    )
    args = parser.parse_args()
    started = time.monotonic()
    if not args.report_only:
        run = subprocess.run(
            [*MUTMUT, "run", "--max-children", str(args.max_children)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            check=False,
        )
        if run.returncode != 0:
            sys.exit(f"mutmut run failed with status {run.returncode}")
    elapsed = time.monotonic() - started
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    for name, status in results():
        module = module_of(name)
        by_module[module][status] += 1
        if status != "killed":
            why = classify(status, *changed_lines(name))
            reasons[module][why] += 1
            survivors[module].append(f"{name}: {status}, {why}")
    report = {
        "seconds": round(elapsed),
        "modules": {
            module: {
                "mutants": sum(counts.values()),
                "killed": counts["killed"],
                "survived": counts["survived"],
                "other": {k: v for k, v in counts.items() if k not in ("killed", "survived")},
                "score": round(counts["killed"] / max(1, sum(counts.values())), 3),
                "left_because": dict(sorted(reasons[module].items())),
                "survivors": sorted(survivors[module]),
            }
            for module, counts in sorted(by_module.items())
        },
    }
    total = sum(m["mutants"] for m in report["modules"].values())
    killed = sum(m["killed"] for m in report["modules"].values())
    report["total"] = {
        "mutants": total,
        "killed": killed,
        "score": round(killed / max(1, total), 3),
    }
    text = json.dumps(report, indent=2)
    if args.report:
        args.report.write_text(text + "\n")
    for module, row in report["modules"].items():
        why = ", ".join(f"{k} {v}" for k, v in row["left_because"].items())
        print(
            f"{module:32} {row['killed']:5}/{row['mutants']:<5} killed  score {row['score']:.1%}"
            f"  left: {why}"
        )
    print(
        f"{'total':32} {killed:5}/{total:<5} killed  score {killed / max(1, total):.1%}"
        f"  ({elapsed / 60:.0f} min)"
    )


if __name__ == "__main__":
    main()
