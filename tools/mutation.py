"""Mutation testing of the core and the durability paths, with a score per module.

    python tools/mutation.py [MODULE|PATTERN ...] [--max-children 2] [--report FILE]
                             [--report-only]

Runs mutmut (configured in pyproject.toml, [tool.mutmut]: identity, admission, lineage,
falco, the spool and inbox acking, the store writer) over the unit tests of those
modules, then reports, per module, the mutants killed, the survivors by name, and the
score. ``MODULE`` (``webhook.lineage``) runs only that module's mutants, a ``PATTERN``
(``'webhook.consumer.xǁPipelineǁ*'``) only the mutants whose names match it. Each
survivor is sorted by why it is left (see :func:`classify`); the mutants reviewed as
equivalent are listed, with the reason, in ``tools/mutation-equivalents.json``. mutmut
keeps its state in mutants/ (ignored by git): remove it after changing tests, since a
mutant's old result is kept while its function is unchanged. It is not part of .ci/run:
see the README's development notes for how long it takes.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = [sys.executable, "-m", "mutmut"]
EQUIVALENTS = ROOT / "tools" / "mutation-equivalents.json"


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


_STRING = re.compile(r"""([rbfRBF]{0,2})("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")
#: a replacement field of an f-string: the value a message names is behaviour, not wording
_FIELD = re.compile(r"\{[^{}]*\}")


def _shape(line: str) -> str:
    """``line`` with each string literal's wording blanked, its f-string fields kept."""

    def literal(match: re.Match[str]) -> str:
        fields = _FIELD.findall(match.group(2)) if "f" in match.group(1).lower() else []
        return '""' + "".join(fields)

    return _STRING.sub(literal, line)


#: an SQL statement with no quoted name or string in it: SQLite and PostgreSQL read its
#: keywords and names alike in any letter case
_SQL = re.compile(
    r"""\s*(SELECT|INSERT|DELETE|UPDATE|CREATE|BEGIN|COMMIT|ROLLBACK|PRAGMA)\b[^'"`]*""", re.I
)


def _case_only(a: str, b: str) -> bool:
    """Only the letter case of SQL statements or codec names (``.encode("ascii")``)
    changed: the database and Python read both alike in any case."""
    if a == b or a.lower() != b.lower() or _STRING.sub('""', a) != _STRING.sub('""', b):
        return False
    for left, right in zip(_STRING.finditer(a), _STRING.finditer(b), strict=True):
        if left.group(0) == right.group(0):
            continue
        codec = a[: left.start()].rstrip().endswith(("encode(", "decode("))
        if not (codec or _SQL.fullmatch(left.group(2)[1:-1])):
            return False
    return True


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


#: a literal used as a key, compared or matched, a value (after or, else, return), or an
#: SQL statement, is behaviour, not wording
_LITERAL_IS_DATA = re.compile(
    r"""(\.get\(|\[|==|!=|\bin\s*[(\[{]?|startswith\(|endswith\(|split\(|strip\(|join\("""
    r"""|\bor\b|\belse\b|\breturn\b|\bexecute(?:many)?\()\s*[rbf]?["']"""
)


@dataclass(frozen=True)
class Equivalent:
    """A mutant reviewed by a person as changing no behaviour, and why. It is matched by
    its function and its diff, not by its number, which moves when the function changes."""

    function: str  # as mutmut names it: webhook.lineage.xǁAttributorǁlearn
    removed: tuple[str, ...]
    added: tuple[str, ...]
    why: str

    def matches(self, mutant: str, removed: list[str], added: list[str]) -> bool:
        return (
            function_of(mutant) == self.function
            and list(self.removed) == removed
            and list(self.added) == added
        )


def load_equivalents(path: Path = EQUIVALENTS) -> list[Equivalent]:
    """The reviewed list; an entry without a reason, or with an unknown key, is refused."""
    entries = json.loads(path.read_text())
    loaded = []
    for index, entry in enumerate(entries):
        if set(entry) != {"function", "removed", "added", "why"} or not entry["why"].strip():
            raise ValueError(f"{path.name}[{index}] needs function, removed, added and why")
        removed, added = tuple(entry["removed"]), tuple(entry["added"])
        loaded.append(Equivalent(entry["function"], removed, added, entry["why"]))
    return loaded


def function_of(mutant: str) -> str:
    return mutant.split("__mutmut_")[0]


def classify(
    status: str, removed: list[str], added: list[str], reviewed: Equivalent | None = None
) -> str:
    """Why a mutant that was not killed is left, where a rule can tell; else "unexplained".

    - timeout: the mutant makes the suite hang; CI's time limit catches that.
    - equivalent: a person reviewed it (``reviewed``, from tools/mutation-equivalents.json)
      and wrote down why no input can tell it from the original.
    - case: only the letter case of an SQL statement or a codec name changed.
    - text: only the wording inside a string literal changed (a message, a log line),
      where the literal is not a key, a comparison or a pattern; no test spells the
      whole text out, and the behaviour is the same.
    - get-default: only the default of a ``.get()`` changed. Equivalent where the key is
      always there by then (reviews and alerts are checked and normalised first); a rule
      cannot prove that, so these are listed apart, not claimed equivalent one by one.
    """
    if status == "timeout":
        return "timeout"
    if status == "survived" and reviewed is not None:
        return "equivalent"
    if status != "survived" or len(removed) != len(added) or not removed:
        return "unexplained"
    pairs = list(zip(removed, added, strict=True))
    if all(_case_only(a, b) for a, b in pairs):
        return "case"
    if all(_shape(a) == _shape(b) and not _LITERAL_IS_DATA.search(a) for a, b in pairs):
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
    parser.add_argument(
        "modules", nargs="*", help="only these modules (webhook.lineage) or name patterns"
    )
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--report", type=Path, default=None, help="also write the report here")
    parser.add_argument(
        "--report-only", action="store_true", help="report on the last run, without running"
    )
    args = parser.parse_args()
    equivalents = load_equivalents()
    # a module runs all its mutants; a pattern or a mutant's own name, those it names
    names = [arg if "*" in arg or "__mutmut_" in arg else f"{arg}.*" for arg in args.modules]
    started = time.monotonic()
    if not args.report_only:
        run = subprocess.run(
            [*MUTMUT, "run", "--max-children", str(args.max_children), *names],
            cwd=ROOT,
            # the same fuzz examples in every run, so that scores can be compared
            env={**os.environ, "WHOEXEC_HYPOTHESIS_PROFILE": "mutation"},
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            # its progress is one long line of spinner frames: show the end of what it said
            said = (run.stdout + run.stderr).replace("\r", "\n").splitlines()[-15:]
            sys.exit("\n".join([*said, f"mutmut run failed with status {run.returncode}"]))
    elapsed = time.monotonic() - started
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    explained: dict[str, dict[str, str]] = defaultdict(dict)
    used: set[Equivalent] = set()
    functions: set[str] = set()  # those whose mutants were looked at
    for name, status in results():
        module = module_of(name)
        if names and not any(fnmatch.fnmatchcase(name, pattern) for pattern in names):
            continue
        by_module[module][status] += 1
        functions.add(function_of(name))
        if status != "killed":
            removed, added = changed_lines(name)
            reviewed = next((e for e in equivalents if e.matches(name, removed, added)), None)
            why = classify(status, removed, added, reviewed)
            reasons[module][why] += 1
            survivors[module].append(f"{name}: {status}, {why}")
            if why == "equivalent" and reviewed is not None:
                used.add(reviewed)
                explained[module][name] = reviewed.why
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
                "equivalent": dict(sorted(explained[module].items())),
            }
            for module, counts in sorted(by_module.items())
        },
    }
    # a reviewed entry of a function looked at that matches no survivor any more was
    # killed or changed: drop it
    stale = [
        f"{e.function}: {' / '.join(e.removed)}"
        for e in equivalents
        if e not in used and e.function in functions
    ]
    report["stale_equivalents"] = stale
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
    for entry in stale:
        print(f"stale entry in {EQUIVALENTS.name} (no survivor matches it): {entry}")


if __name__ == "__main__":
    main()
