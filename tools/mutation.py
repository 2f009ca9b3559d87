"""Mutation testing of the core and the durability paths, with a score per module.

    python tools/mutation.py [MODULE|PATTERN ...] [--max-children 2] [--report FILE]
                             [--report-only] [--hand | --hand-only [--hand-suite]]

Runs mutmut (configured in pyproject.toml, [tool.mutmut]: identity, admission, lineage,
falco, the spool and inbox acking, the store writer) over the unit tests of those
modules, then reports, per module, the mutants killed, the survivors by name, and the
score. ``MODULE`` (``webhook.attribution.lineage``) runs only that module's mutants, a ``PATTERN``
(``'webhook.attribution.pipeline.xǁPipelineǁ*'``) only the mutants whose names match it. Each
survivor is sorted by why it is left (see :func:`classify`); the mutants reviewed as
equivalent are listed, with the reason, in ``tools/mutation-equivalents.json``. mutmut
keeps its state in mutants/ (ignored by git): remove it after changing tests, since a
mutant's old result is kept while its function is unchanged. It is not part of .ci/run:
see the README's development notes for how long it takes.

mutmut's operators cannot express some realistic bugs: a dropped conjunct, ``all`` for
``any``, a changed default, a merge for a replace. Those are written by hand, reviewed,
in ``tools/hand-mutants.json`` (the file, the exact original snippet, its replacement,
the bug it stands for, the tests expected to kill it). ``--hand`` applies them one by one
after mutmut's run (``--hand-only``: instead of it), each on a temporary copy of the
tree, never on the tree itself, and reports each as killed, survived, or stale (its
snippet is no longer in the file, or is there more than once). ``--hand-suite`` runs the
whole unit suite against each instead of the tests the entry names.

Code that runs only in whoexec's own processes (gunicorn's worker, the consumer's
supervisor and pipeline process, the intake's event loop) is reached by no in-process
test, and mutmut reports its mutants as "no tests". ``--process`` runs each of those, and
each survivor of the same functions, against the tests that start those processes
(``tools/process-tests.json``: the functions, the tests, the process they run in). The
mutant is switched on in the test's environment (``MUTANT_UNDER_TEST``), which the
servers the tests start inherit, with mutmut's copy of the package first on their path;
a kill there counts in the module's score as "killed in a process".
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = [sys.executable, "-m", "mutmut"]
EQUIVALENTS = ROOT / "tools" / "mutation-equivalents.json"
HAND_MUTANTS = ROOT / "tools" / "hand-mutants.json"
PROCESS_TESTS = ROOT / "tools" / "process-tests.json"
MUTANTS = ROOT / "mutants"
#: what --process found, kept with mutmut's state (removed with it after a change)
PROCESS_RESULTS = MUTANTS / "whoexec-process-results.json"


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

    function: str  # as mutmut names it: webhook.attribution.lineage.xǁAttributorǁlearn
    removed: tuple[str, ...]
    added: tuple[str, ...]
    why: str

    def matches(self, mutant: str, removed: list[str], added: list[str]) -> bool:
        return (
            function_of(mutant) == self.function
            and list(self.removed) == removed
            and list(self.added) == added
        )


def _reviewed(path: Path, keys: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each entry of a reviewed list in ``path``, named for its errors (``file[3]``); one
    without exactly ``keys`` is refused."""
    for index, entry in enumerate(json.loads(path.read_text())):
        where = f"{path.name}[{index}]"
        if not isinstance(entry, dict) or set(entry) != keys:
            raise ValueError(f"{where} needs exactly {', '.join(sorted(keys))}")
        yield where, entry


_EQUIVALENT_KEYS = {"function", "removed", "added", "why"}


def load_equivalents(path: Path = EQUIVALENTS) -> list[Equivalent]:
    """The reviewed list; an entry without a reason, or with an unknown key, is refused."""
    loaded = []
    for where, entry in _reviewed(path, _EQUIVALENT_KEYS):
        if not entry["why"].strip():
            raise ValueError(f"{where} needs the reason it changes nothing")
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
    - no tests: no test mutmut ran reaches it (code that runs only in whoexec's own
      processes: see ``--process``).
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
    if status in ("timeout", "no tests"):
        return status
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
    # webhook.attribution.lineage.x_freshness_problem__mutmut_3 -> webhook.attribution.lineage
    # webhook.attribution.pipeline.xǁInboxReaderǁrun__mutmut_2 -> webhook.attribution.pipeline
    head = mutant.split("__mutmut_")[0]
    parts = head.split(".")
    return ".".join(p for p in parts[:-1])


# --- hand-written mutants -------------------------------------------------------------------


@dataclass(frozen=True)
class HandMutant:
    """A realistic one-line bug that mutmut's operators cannot make, reviewed by a person."""

    file: str  # relative to the tree: webhook/sessions/store/claims.py
    original: str  # the exact snippet, found once in the file
    replacement: str
    bug: str  # what the change would do to a user
    tests: tuple[str, ...]  # pytest node ids expected to kill it

    @property
    def name(self) -> str:
        return f"{self.file}: {self.bug}"


_HAND_KEYS = {"file", "original", "replacement", "bug", "tests"}


def load_hand_mutants(path: Path = HAND_MUTANTS) -> list[HandMutant]:
    """The reviewed list; an entry without its bug or tests, an unknown key, or a
    replacement that changes nothing, is refused."""
    loaded = []
    for where, entry in _reviewed(path, _HAND_KEYS):
        if not entry["bug"].strip() or not entry["tests"] or not entry["original"]:
            raise ValueError(f"{where} needs the bug it stands for and the tests to kill it")
        if entry["original"] == entry["replacement"]:
            raise ValueError(f"{where}: the replacement is the original")
        loaded.append(
            HandMutant(
                entry["file"],
                entry["original"],
                entry["replacement"],
                entry["bug"],
                tuple(entry["tests"]),
            )
        )
    return loaded


#: never copied: version control, environments, caches, mutmut's own copy, outputs
_NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "venv", ".venv-ci", "__pycache__", "*.egg-info", ".pytest_cache",
    ".hypothesis", ".mypy_cache", ".ruff_cache", "mutants", "test-output", "whoexec-state",
    "build", "dist",
)  # fmt: skip


def apply_hand_mutant(tree: Path, mutant: HandMutant) -> str:
    """Apply ``mutant`` to the copy at ``tree``; "" once applied, else why it is stale."""
    target = tree / mutant.file
    if not target.is_file():
        return f"stale: {mutant.file} does not exist"
    text = target.read_text()
    found = text.count(mutant.original)
    if found != 1:
        where = "is not in" if not found else f"is {found} times in"
        return f"stale: the original snippet {where} {mutant.file}"
    target.write_text(text.replace(mutant.original, mutant.replacement))
    return ""


Run = Callable[..., "subprocess.CompletedProcess[str]"]


def _pytest(
    tree: Path,
    tests: Sequence[str],
    run: Run,
    timeout: float,
    env_extra: dict[str, str] | None = None,
) -> tuple[str, str]:
    """Run ``tests`` in the copy at ``tree``, with ``env_extra`` in their environment:
    ("passed" | "failed" | "error" | "timeout", the end of what pytest said)."""
    command = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x",
        "-m", "not e2e", *tests,
    ]  # fmt: skip
    env = {
        **os.environ,
        # the copy's package, not the installed (editable) one, here and in every server
        # the tests start (`python -m webhook.cli` inherits the environment)
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])),
        "WHOEXEC_HYPOTHESIS_PROFILE": "mutation",
        **(env_extra or {}),
    }
    try:
        done = run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no answer in {timeout:.0f} s"
    said = "\n".join((done.stdout + done.stderr).strip().splitlines()[-3:])
    # pytest: 0 all passed, 1 some failed; anything else is no verdict (no tests, usage)
    return {0: "passed", 1: "failed"}.get(done.returncode, "error"), said


def run_hand_mutants(
    mutants: Sequence[HandMutant],
    root: Path = ROOT,
    *,
    suite: Sequence[str] | None = None,
    run: Run = subprocess.run,
    workdir: Path | None = None,
    timeout: float = 1800.0,
    progress: Callable[[str], None] = lambda line: None,
) -> list[dict[str, Any]]:
    """Each mutant applied alone to a temporary copy of ``root`` and its tests run there
    (``suite``: these instead of the tests each entry names). The copy is removed however
    the run ends (Ctrl-C included); ``root`` is never written. The tests are first run on
    the unmutated copy: a test that fails there would make every mutant look killed."""
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="whoexec-hand-mutants-", dir=workdir) as tmp:
        tree = Path(tmp) / "tree"
        shutil.copytree(root, tree, ignore=_NOT_COPIED, symlinks=True)
        wanted = list(suite) if suite is not None else sorted({t for m in mutants for t in m.tests})
        started = time.monotonic()
        outcome, said = _pytest(tree, wanted, run, timeout)
        if outcome != "passed":
            raise RuntimeError(f"the tests do not pass on the unmutated tree ({outcome}):\n{said}")
        progress(f"baseline: the tests pass unmutated ({time.monotonic() - started:.0f} s)")
        for mutant in mutants:
            target = tree / mutant.file
            original = target.read_text() if target.is_file() else None
            started = time.monotonic()
            row: dict[str, Any] = {"file": mutant.file, "bug": mutant.bug}
            stale = apply_hand_mutant(tree, mutant)
            if stale:
                row.update(status="stale", detail=stale)
            else:
                try:
                    tests = list(suite) if suite is not None else list(mutant.tests)
                    outcome, said = _pytest(tree, tests, run, timeout)
                finally:
                    assert original is not None
                    target.write_text(original)  # the next mutant starts from the original
                status = {"failed": "killed", "passed": "survived"}.get(outcome, outcome)
                row.update(status=status, detail=said if status != "survived" else "")
            row["seconds"] = round(time.monotonic() - started)
            results.append(row)
            progress(f"{row['status']:9} {mutant.name} ({row['seconds']} s)")
    return results


# --- mutants of code that runs only in whoexec's own processes ---------------------------


@dataclass(frozen=True)
class ProcessTarget:
    """Functions that run only in a process of whoexec's own, and the tests that start it."""

    functions: tuple[str, ...]  # patterns of mutmut's names: webhook.admission.gworker.*
    tests: tuple[str, ...]  # test files or node ids, run in mutmut's copy
    process: str  # the process they run in, and how the tests reach it

    def covers(self, mutant: str) -> bool:
        return any(fnmatch.fnmatchcase(mutant, pattern) for pattern in self.functions)


_PROCESS_KEYS = {"functions", "tests", "process"}


def load_process_targets(path: Path = PROCESS_TESTS) -> list[ProcessTarget]:
    """The reviewed list; an entry without its functions, tests or process is refused."""
    loaded = []
    for where, entry in _reviewed(path, _PROCESS_KEYS):
        if not entry["functions"] or not entry["tests"] or not entry["process"].strip():
            raise ValueError(f"{where} needs its functions, its tests and the process")
        loaded.append(
            ProcessTarget(tuple(entry["functions"]), tuple(entry["tests"]), entry["process"])
        )
    return loaded


def load_process_results(path: Path = PROCESS_RESULTS) -> dict[str, str]:
    """What ``--process`` found, by mutant name; nothing before its first run."""
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return {}


def _pytest_with_mutant(
    mutants: Path, name: str, tests: Sequence[str], run: Run, timeout: float
) -> tuple[str, str]:
    """``tests`` run in mutmut's copy with mutant ``name`` switched on ("" for none), in
    this process and in every server the tests start (they inherit the environment)."""
    return _pytest(mutants, tests, run, timeout, {"MUTANT_UNDER_TEST": name})


def run_process_mutants(
    candidates: Sequence[str],
    targets: Sequence[ProcessTarget],
    mutants: Path = MUTANTS,
    *,
    run: Run = subprocess.run,
    workers: int = 2,
    timeout: float = 600.0,
    progress: Callable[[str], None] = lambda line: None,
    record: Callable[[str, dict[str, Any]], None] = lambda name, row: None,
) -> dict[str, dict[str, Any]]:
    """Each of ``candidates`` (mutmut's names) that a target covers, run against that
    target's tests in mutmut's copy at ``mutants``: killed, survived, timeout or error (no
    verdict), each also handed to ``record`` as it is found. Each target's tests are first
    run with no mutant on: a test that fails there would make every mutant look killed."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    recording = threading.Lock()

    chosen = [
        (name, target)
        for name in candidates
        if (target := next((t for t in targets if t.covers(name)), None)) is not None
    ]
    for target in {t for _, t in chosen}:
        outcome, said = _pytest_with_mutant(mutants, "", target.tests, run, timeout)
        if outcome != "passed":
            raise RuntimeError(
                f"the tests of {target.process!r} do not pass with no mutant ({outcome}):\n{said}"
            )
        progress(f"baseline: {', '.join(target.tests)} pass with no mutant")

    def one(item: tuple[str, ProcessTarget]) -> tuple[str, dict[str, Any]]:
        name, target = item
        started = time.monotonic()
        outcome, said = _pytest_with_mutant(mutants, name, target.tests, run, timeout)
        status = {"failed": "killed", "passed": "survived"}.get(outcome, outcome)
        row = {"status": status, "seconds": round(time.monotonic() - started)}
        if status != "survived":
            row["detail"] = said  # which test failed, and how: a kill is worth a look
        with recording:
            record(name, row)
            progress(f"{status:9} {name} ({row['seconds']} s)")
        return name, row

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(one, chosen))


def every_nth(names: Sequence[str], at_most: int | None) -> list[str]:
    """At most ``at_most`` of each function's ``names``, evenly spread over them (all of
    them when ``at_most`` is None): a sample that leaves no function out."""
    by_function: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_function[function_of(name)].append(name)
    chosen = []
    for members in by_function.values():
        ordered = sorted(members, key=lambda n: int(n.rsplit("__mutmut_", 1)[1]))
        if at_most is None or len(ordered) <= at_most:
            chosen += ordered
        else:
            chosen += [ordered[i * len(ordered) // at_most] for i in range(at_most)]
    return chosen


def process_mutants(names: Sequence[str], workers: int, at_most: int | None = None) -> None:
    """``--process``: the mutants of mutmut's last run (of ``names``) that no in-process
    test killed, run against their process's tests (``at_most`` of each function when
    given); each result is kept in ``PROCESS_RESULTS`` as it is found, and not run again."""
    found = load_process_results()
    candidates = [
        name
        for name, status in results()
        if status in ("no tests", "survived")
        and name not in found
        and (not names or any(fnmatch.fnmatchcase(name, pattern) for pattern in names))
    ]

    def keep(name: str, row: dict[str, Any]) -> None:
        found[name] = row["status"]
        PROCESS_RESULTS.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
        with PROCESS_RESULTS.with_suffix(".log").open("a") as log:
            log.write(json.dumps({"mutant": name, **row}) + "\n")

    run_process_mutants(
        every_nth(candidates, at_most),
        load_process_targets(),
        workers=workers,
        progress=lambda line: print(line, flush=True),
        record=keep,
    )


def run_mutmut(names: list[str], max_children: int) -> None:
    run = subprocess.run(
        [*MUTMUT, "run", "--max-children", str(max_children), *names],
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


def mutmut_report(names: list[str], max_children: int, report_only: bool) -> dict[str, Any]:
    """Run mutmut (unless ``report_only``) and sort what it left: the report's modules."""
    equivalents = load_equivalents()
    started = time.monotonic()
    if not report_only:
        run_mutmut(names, max_children)
    elapsed = time.monotonic() - started
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    explained: dict[str, dict[str, str]] = defaultdict(dict)
    used: set[Equivalent] = set()
    functions: set[str] = set()  # those whose mutants were looked at
    in_process = load_process_results()
    not_run: Counter[str] = Counter()
    for name, status in results():
        module = module_of(name)
        if names and not any(fnmatch.fnmatchcase(name, pattern) for pattern in names):
            continue
        if status == "not checked":  # left out of a sampled run: not in the score
            not_run[module] += 1
            continue
        if status != "killed" and in_process.get(name) in ("killed", "survived"):
            # run against the tests that start its process: their verdict stands
            status = "killed in a process" if in_process[name] == "killed" else "survived"
        by_module[module][status] += 1
        functions.add(function_of(name))
        if status not in ("killed", "killed in a process"):
            removed, added = changed_lines(name)
            reviewed = next((e for e in equivalents if e.matches(name, removed, added)), None)
            why = classify(status, removed, added, reviewed)
            reasons[module][why] += 1
            survivors[module].append(f"{name}: {status}, {why}")
            if why == "equivalent" and reviewed is not None:
                used.add(reviewed)
                explained[module][name] = reviewed.why
    report: dict[str, Any] = {
        "seconds": round(elapsed),
        "modules": {
            module: {
                "mutants": sum(counts.values()),
                "killed": counts["killed"] + counts["killed in a process"],
                "killed_in_a_process": counts["killed in a process"],
                "not_run": not_run[module],
                "survived": counts["survived"],
                "other": {
                    k: v
                    for k, v in counts.items()
                    if k not in ("killed", "survived", "killed in a process")
                },
                "score": round(
                    (counts["killed"] + counts["killed in a process"])
                    / max(1, sum(counts.values())),
                    3,
                ),
                "left_because": dict(sorted(reasons[module].items())),
                "survivors": sorted(survivors[module]),
                "equivalent": dict(sorted(explained[module].items())),
            }
            for module, counts in sorted(by_module.items())
        },
    }
    # a reviewed entry of a function looked at that matches no survivor any more was
    # killed or changed: drop it
    report["stale_equivalents"] = [
        f"{e.function}: {' / '.join(e.removed)}"
        for e in equivalents
        if e not in used and e.function in functions
    ]
    total = sum(m["mutants"] for m in report["modules"].values())
    killed = sum(m["killed"] for m in report["modules"].values())
    report["total"] = {
        "mutants": total,
        "killed": killed,
        "score": round(killed / max(1, total), 3),
    }
    return report


def print_mutmut(report: dict[str, Any]) -> None:
    for module, row in report["modules"].items():
        why = ", ".join(f"{k} {v}" for k, v in row["left_because"].items())
        sample = f"  ({row['not_run']} more not run)" if row.get("not_run") else ""
        print(
            f"{module:32} {row['killed']:5}/{row['mutants']:<5} killed  score {row['score']:.1%}"
            f"  left: {why}{sample}"
        )
    total = report["total"]
    print(
        f"{'total':32} {total['killed']:5}/{total['mutants']:<5} killed  score "
        f"{total['score']:.1%}  ({report['seconds'] / 60:.0f} min)"
    )
    in_a_process = sum(m["killed_in_a_process"] for m in report["modules"].values())
    if "process_seconds" in report or in_a_process:
        print(f"  of which killed in a process (--process): {in_a_process}")
    for entry in report["stale_equivalents"]:
        print(f"stale entry in {EQUIVALENTS.name} (no survivor matches it): {entry}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "modules",
        nargs="*",
        help="only these modules (webhook.attribution.lineage) or name patterns",
    )
    parser.add_argument(
        "--max-children", type=int, default=2, help="mutants run at once (mutmut's and --process)"
    )
    parser.add_argument("--report", type=Path, default=None, help="also write the report here")
    parser.add_argument(
        "--report-only", action="store_true", help="report on the last run, without running"
    )
    hand = parser.add_mutually_exclusive_group()
    hand.add_argument(
        "--hand", action="store_true", help=f"then the mutants of {HAND_MUTANTS.name} too"
    )
    hand.add_argument(
        "--hand-only", action="store_true", help=f"only the mutants of {HAND_MUTANTS.name}"
    )
    parser.add_argument(
        "--process",
        action="store_true",
        help=f"then run the mutants no in-process test reaches against {PROCESS_TESTS.name}",
    )
    parser.add_argument(
        "--process-sample",
        type=int,
        default=None,
        metavar="N",
        help="--process runs at most N mutants of each function, evenly spread",
    )
    parser.add_argument(
        "--hand-suite",
        action="store_true",
        help="run the whole unit suite against each hand-written mutant, not its tests",
    )
    args = parser.parse_args()
    report: dict[str, Any] = {}
    if not args.hand_only:
        # a module runs all its mutants; a pattern or a mutant's own name, those it names
        names = [arg if "*" in arg or "__mutmut_" in arg else f"{arg}.*" for arg in args.modules]
        if args.process:
            started = time.monotonic()
            if not args.report_only:
                run_mutmut(names, args.max_children)
            seconds = round(time.monotonic() - started)
            started = time.monotonic()
            try:
                process_mutants(names, args.max_children, args.process_sample)
            except RuntimeError as exc:
                sys.exit(str(exc))
            process_seconds = round(time.monotonic() - started)
            report = mutmut_report(names, args.max_children, report_only=True)
            report.update(seconds=seconds, process_seconds=process_seconds)
            log = PROCESS_RESULTS.with_suffix(".log")
            if log.exists():  # each process mutant run, and the test that killed it
                report["process_runs"] = [json.loads(x) for x in log.read_text().splitlines()]
        else:
            report = mutmut_report(names, args.max_children, args.report_only)
        print_mutmut(report)
    if args.hand or args.hand_only:
        started = time.monotonic()
        try:
            rows = run_hand_mutants(
                load_hand_mutants(),
                suite=["tests"] if args.hand_suite else None,
                progress=lambda line: print(line, flush=True),
            )
        except RuntimeError as exc:
            sys.exit(str(exc))
        counts = Counter(row["status"] for row in rows)
        report["hand"] = {
            "seconds": round(time.monotonic() - started),
            "suite": "unit suite" if args.hand_suite else "the tests each entry names",
            "counts": dict(sorted(counts.items())),
            "mutants": rows,
        }
        print(
            f"hand-written mutants: {counts['killed']} of {len(rows)} killed, "
            f"{counts['survived']} survived, {len(rows) - counts['killed'] - counts['survived']}"
            f" stale or no verdict ({report['hand']['seconds'] / 60:.0f} min)"
        )
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
