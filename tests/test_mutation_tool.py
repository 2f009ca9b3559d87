"""tools/mutation.py sorts the mutants left alive (a wrong rule would hide a gap), and
applies the hand-written ones without ever touching the tree."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "mutation_tool", Path(__file__).parent.parent / "tools" / "mutation.py"
)
assert _SPEC is not None and _SPEC.loader is not None
mutation = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = mutation  # its dataclasses look their module up there
_SPEC.loader.exec_module(mutation)


@pytest.mark.parametrize(
    ("removed", "added", "why"),
    [
        ('raise X("a b")', 'raise X("XXa bXX")', "text"),
        ('"only the whoexec webhook may set"', '"ONLY THE WHOEXEC WEBHOOK MAY SET"', "text"),
        ('x = d.get("k", "")', 'x = d.get("k", None)', "get-default"),
        ('x = d.get("k", "")', 'x = d.get("k", )', "get-default"),
        # a literal that is a key, a comparison or a pattern is behaviour
        ('ns = fields.get("k8s.ns.name")', 'ns = fields.get("XXk8s.ns.nameXX")', "unexplained"),
        ('if a.lower() == "false":', 'if a.lower() == "XXfalseXX":', "unexplained"),
        ('row["user"]', 'row["USER"]', "unexplained"),
        ('if kind in ("a", "b"):', 'if kind in ("XXaXX", "b"):', "unexplained"),
        ('name = given or ""', 'name = given or "XXXX"', "unexplained"),  # a value
        ('return ""', 'return "XXXX"', "unexplained"),
        ("x = 1", "x = 2", "unexplained"),
        ('raise X("a")', "raise X(None)", "unexplained"),
        # SQL statements and codec names read alike in any letter case
        (
            'db.execute("SELECT count(*) FROM spool")',
            'db.execute("select count(*) from spool")',
            "case",
        ),
        ('db.execute("COMMIT")', 'db.execute("commit")', "case"),
        ('x = text.decode("ascii")', 'x = text.decode("ASCII")', "case"),
        (').decode("ascii")', ').decode("ASCII")', "case"),
        # but not a quoted name or string inside SQL, nor any other literal
        (
            """db.execute("SELECT * FROM t WHERE k = 'On'")""",
            """db.execute("select * from t where k = 'on'")""",
            "unexplained",
        ),
        ('if mode == "WAL":', 'if mode == "wal":', "unexplained"),
        # an f-string's wording is text; the value it names is behaviour
        ('raise X(f"time {t!r} is bad")', 'raise X(f"XXtime {t!r} is badXX")', "text"),
        ('raise X(f"started {a - b}s ago")', 'raise X(f"started {a + b}s ago")', "unexplained"),
        ('raise X(f"time {t[:40]!r} is bad")', 'raise X(f"time {t[:41]!r} is bad")', "unexplained"),
    ],
)
def test_a_survivor_is_explained_only_by_a_rule_that_holds(removed, added, why):
    assert mutation.classify("survived", [removed], [added]) == why


def test_timeouts_are_caught_and_other_statuses_are_not_explained():
    assert mutation.classify("timeout", [], []) == "timeout"
    assert mutation.classify("no tests", ["a"], ["b"]) == "no tests"
    assert mutation.classify("suspicious", ["a"], ["b"]) == "unexplained"
    assert mutation.classify("survived", ["a", "b"], ["a"]) == "unexplained"


LEARN = "webhook.attribution.lineage.xǁAttributorǁlearn"


def test_a_reviewed_equivalent_explains_only_the_mutant_it_was_written_for():
    entry = mutation.Equivalent(LEARN, ("self.n += 1",), ("self.n += 2",), "any change works")
    assert entry.matches(f"{LEARN}__mutmut_39", ["self.n += 1"], ["self.n += 2"])
    # the same diff in another function, or another diff here, is not what was reviewed
    assert not entry.matches(
        "webhook.attribution.lineage.x_other__mutmut_39", ["self.n += 1"], ["self.n += 2"]
    )
    assert not entry.matches(f"{LEARN}__mutmut_38", ["self.n += 1"], ["self.n -= 1"])
    args = ("survived", ["self.n += 1"], ["self.n += 2"])
    assert mutation.classify(*args, reviewed=entry) == "equivalent"
    assert mutation.classify(*args) == "unexplained"
    assert mutation.classify("timeout", [], [], reviewed=entry) == "timeout"


@pytest.mark.parametrize(
    "entry",
    [
        {"function": LEARN, "removed": ["a"], "added": ["b"], "why": " "},
        {"function": LEARN, "removed": ["a"], "added": ["b"]},
        {"function": LEARN, "removed": ["a"], "added": ["b"], "why": "x", "by": "me"},
    ],
    ids=["blank-reason", "no-reason", "unknown-key"],
)
def test_a_reviewed_entry_without_its_reason_is_refused(tmp_path, entry):
    path = tmp_path / "equivalents.json"
    path.write_text(json.dumps([entry]))
    said = (
        r"needs the reason it changes nothing"
        if "why" in entry and len(entry) == 4
        else r"needs exactly added, function, removed, why"
    )
    with pytest.raises(ValueError, match=r"^equivalents.json\[0\] " + said + "$"):
        mutation.load_equivalents(path)


@pytest.mark.parametrize("load", ["load_equivalents", "load_hand_mutants", "load_process_targets"])
def test_a_reviewed_list_whose_entry_is_not_an_object_is_refused_by_its_place(tmp_path, load):
    path = tmp_path / "list.json"
    path.write_text('[["function", "removed"]]')
    with pytest.raises(ValueError, match=r"^list.json\[0\] needs exactly "):
        getattr(mutation, load)(path)


def test_every_reviewed_equivalent_names_a_mutated_function_and_gives_a_reason():
    import tomllib

    config = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    mutated = tuple(
        path.removesuffix(".py").replace("/", ".") + "."
        for path in config["tool"]["mutmut"]["only_mutate"]
    )
    entries = mutation.load_equivalents()
    assert entries, "the core's equivalent mutants are reviewed"
    for entry in entries:
        assert entry.function.startswith(mutated), entry.function
        assert len(entry.why) > 20 and entry.removed and entry.added, entry.function
    assert len(set(entries)) == len(entries), "an entry twice"


# --- hand-written mutants ---------------------------------------------------------------------

BOUNDS = "def within(n: int) -> bool:\n    return n <= 3\n\n\nLOW = 0  # bound\nHIGH = 9  # bound\n"


def tiny_project(root: Path, test_body: str = "assert within(3) and not within(4)") -> Path:
    """A package and its test, as the runner copies and runs a tree."""
    (root / "calc").mkdir(parents=True)
    (root / "calc" / "__init__.py").write_text("")
    (root / "calc" / "bounds.py").write_text(BOUNDS)
    (root / "tests").mkdir()
    (root / "tests" / "test_bounds.py").write_text(
        f"from calc.bounds import within\n\n\ndef test_the_bound():\n    {test_body}\n"
    )
    (root / ".git").mkdir()  # never copied
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


def hand(original: str, replacement: str, file: str = "calc/bounds.py"):
    return mutation.HandMutant(file, original, replacement, f"{original} -> {replacement}",
                               ("tests/test_bounds.py",))  # fmt: skip


def contents(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_each_hand_written_mutant_is_applied_alone_to_a_copy_and_judged_by_its_tests(tmp_path):
    project = tiny_project(tmp_path / "project")
    before = contents(project)
    work = tmp_path / "work"
    work.mkdir()
    mutants = [
        hand("return n <= 3", "return n < 3"),  # the test fails: killed
        # starts from the original again (else its snippet would be gone): no test tells
        hand("return n <= 3", "return n <= 3 or n == -1"),
        hand("return n >= 100", "return n > 100"),  # not in the file
        hand("9  # bound", "8  # bound"),
        hand("  # bound", "  # limit"),  # twice in the file: which one was meant?
        hand("x", "y", file="calc/gone.py"),
        hand("return n <= 3", "return n <= 3 +"),  # a typo: no verdict, never a kill
    ]
    rows = mutation.run_hand_mutants(mutants, project, workdir=work)
    assert [(row["status"], row["detail"][:60]) for row in rows] == [
        ("killed", rows[0]["detail"][:60]),
        ("survived", ""),
        ("stale", "stale: the original snippet is not in calc/bounds.py"),
        ("survived", ""),
        ("stale", "stale: the original snippet is 2 times in calc/bounds.py"),
        ("stale", "stale: calc/gone.py does not exist"),
        ("error", rows[6]["detail"][:60]),
    ]
    assert "1 failed" in rows[0]["detail"]
    assert "1 error" in rows[6]["detail"], "a collection error, not a failing test"
    assert contents(project) == before, "the tree itself is never written"
    assert list(work.iterdir()) == [], "the copy is removed"


def test_an_interrupted_run_leaves_the_tree_as_it_was_and_no_copy_behind(tmp_path):
    import subprocess

    project = tiny_project(tmp_path / "project")
    before = contents(project)
    work = tmp_path / "work"
    work.mkdir()
    seen: list[str] = []

    def run(command, cwd, **kwargs):
        if len(seen) == 1:  # the first mutant, after the baseline
            assert not (Path(cwd) / ".git").exists(), "version control is not copied"
            assert "return n < 3" in (Path(cwd) / "calc" / "bounds.py").read_text()
            assert "return n < 3" not in (project / "calc" / "bounds.py").read_text()
            raise KeyboardInterrupt
        seen.append(str(cwd))
        assert kwargs["env"]["PYTHONPATH"].split(":")[0] == str(cwd), "the copy's package"
        return subprocess.CompletedProcess(command, 0, "1 passed", "")

    with pytest.raises(KeyboardInterrupt):
        mutation.run_hand_mutants([hand("return n <= 3", "return n < 3")], project,
                                  workdir=work, run=run)  # fmt: skip
    assert contents(project) == before
    assert list(work.iterdir()) == []


def test_a_mutant_whose_tests_hang_is_a_timeout_not_a_kill(tmp_path):
    import subprocess

    calls = []

    def run(command, cwd, timeout, **kwargs):
        calls.append(timeout)
        if len(calls) > 1:
            raise subprocess.TimeoutExpired(command, timeout)
        return subprocess.CompletedProcess(command, 0, "", "")

    project = tiny_project(tmp_path / "project")
    (row,) = mutation.run_hand_mutants(
        [hand("return n <= 3", "return n < 3")], project, run=run, timeout=7
    )
    assert (row["status"], row["detail"], calls) == ("timeout", "no answer in 7 s", [7, 7])


@pytest.mark.slow
def test_mutants_are_not_judged_by_tests_that_fail_without_them(tmp_path):
    project = tiny_project(tmp_path / "project", test_body="assert within(4)")
    with pytest.raises(RuntimeError, match="the tests do not pass on the unmutated tree"):
        mutation.run_hand_mutants([hand("return n <= 3", "return n < 3")], project)


GOOD = {"file": "f.py", "original": "a", "replacement": "b", "bug": "x", "tests": ["t"]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bug": " "}, " needs the bug it stands for"),
        ({"tests": []}, " needs the bug it stands for"),
        ({"original": ""}, " needs the bug it stands for"),
        ({"replacement": "a"}, ": the replacement is the original"),
        ({"by": "me"}, " needs exactly bug, file, original, replacement, tests"),
    ],
    ids=["no-bug", "no-tests", "no-original", "no-change", "unknown-key"],
)
def test_a_hand_written_mutant_without_its_bug_or_tests_is_refused(tmp_path, change, message):
    path = tmp_path / "hand.json"
    path.write_text(json.dumps([GOOD, {**GOOD, **change}]))
    with pytest.raises(ValueError, match=re.escape(f"hand.json[1]{message}")):
        mutation.load_hand_mutants(path)


def test_every_hand_written_mutant_applies_once_and_names_tests_that_exist():
    root = Path(__file__).parent.parent
    mutants = mutation.load_hand_mutants()
    assert len(mutants) >= 12, "the issue's seven and the ones found beside them"
    for mutant in mutants:
        # a snippet changed by a later commit is stale: update the entry, or drop it
        assert (root / mutant.file).read_text().count(mutant.original) == 1, mutant.name
        for test in mutant.tests:
            path, _, name = test.partition("::")
            assert f"\ndef {name}(" in (root / path).read_text(), test
    assert len({(m.file, m.original, m.replacement) for m in mutants}) == len(mutants)


# --- mutants of code that runs only in whoexec's own processes ----------------------------

SERVE = "webhook.attribution.app.x_serve_consumer"
WORKER = "webhook.admission.gworker"


def process_target(*functions: str, tests: tuple[str, ...] = ("tests/t.py",)):
    return mutation.ProcessTarget(functions, tests, "a process of ours")


def test_a_process_mutant_is_switched_on_in_the_servers_the_tests_start_and_judged_by_them(
    tmp_path,
):
    import subprocess

    targets = [
        process_target(f"{SERVE}__mutmut_*", tests=("tests/a.py",)),
        process_target(f"{WORKER}.*", tests=("tests/b.py", "tests/c.py")),
    ]
    seen: list[tuple[str, tuple[str, ...]]] = []

    def run(command, cwd, env, **kwargs):
        assert cwd == tmp_path, "mutmut's copy"
        assert env["PYTHONPATH"].split(":")[0] == str(tmp_path), "its package first"
        tests = tuple(command[command.index("not e2e") + 1 :])
        seen.append((env["MUTANT_UNDER_TEST"], tests))
        code = {f"{SERVE}__mutmut_1": 1, f"{WORKER}.xǁ_Connectionǁrecv__mutmut_2": 2}
        return subprocess.CompletedProcess(command, code.get(env["MUTANT_UNDER_TEST"], 0), "", "")

    rows = mutation.run_process_mutants(
        [f"{SERVE}__mutmut_1", f"{SERVE}__mutmut_2", f"{WORKER}.xǁ_Connectionǁrecv__mutmut_2",
         "webhook.attribution.app.x_build_consumer__mutmut_1"],
        targets, tmp_path, run=run, workers=1,
    )  # fmt: skip
    assert {name: row["status"] for name, row in rows.items()} == {
        f"{SERVE}__mutmut_1": "killed",
        f"{SERVE}__mutmut_2": "survived",
        f"{WORKER}.xǁ_Connectionǁrecv__mutmut_2": "error",  # no verdict: never a kill
    }, "a mutant no target covers is not run"
    baselines = sorted(s for s in seen if s[0] == "")
    assert baselines == [("", ("tests/a.py",)), ("", ("tests/b.py", "tests/c.py"))]
    assert (f"{WORKER}.xǁ_Connectionǁrecv__mutmut_2", ("tests/b.py", "tests/c.py")) in seen


def test_process_mutants_are_not_judged_by_tests_that_fail_with_no_mutant(tmp_path):
    import subprocess

    def run(command, env, **kwargs):
        return subprocess.CompletedProcess(command, 1, "1 failed", "")

    with pytest.raises(RuntimeError, match="do not pass with no mutant"):
        mutation.run_process_mutants(
            [f"{SERVE}__mutmut_1"], [process_target(f"{SERVE}__*")], tmp_path, run=run
        )


def test_a_kill_in_a_process_counts_in_the_module_s_score(monkeypatch, tmp_path):
    monkeypatch.setattr(
        mutation,
        "results",
        lambda: [
            (f"{SERVE}__mutmut_1", "killed"),
            (f"{SERVE}__mutmut_2", "no tests"),
            (f"{SERVE}__mutmut_3", "no tests"),
            (f"{SERVE}__mutmut_4", "survived"),
            (f"{SERVE}__mutmut_5", "not checked"),  # left out of a sample
        ],
    )
    monkeypatch.setattr(mutation, "changed_lines", lambda name: (["a = 1"], ["a = 2"]))
    monkeypatch.setattr(mutation, "load_equivalents", lambda: [])
    found = tmp_path / "process.json"
    found.write_text(json.dumps({f"{SERVE}__mutmut_2": "killed", f"{SERVE}__mutmut_3": "survived"}))
    monkeypatch.setattr(mutation, "PROCESS_RESULTS", found)
    monkeypatch.setattr(mutation, "load_process_results", lambda: json.loads(found.read_text()))
    row = mutation.mutmut_report([], 2, report_only=True)["modules"]["webhook.attribution.app"]
    assert (row["killed"], row["killed_in_a_process"], row["mutants"], row["score"]) == (
        2, 1, 4, 0.5,
    )  # fmt: skip
    assert row["not_run"] == 1, "counted apart, not in the score"
    # one that survived its process is a survivor like any other, to be explained
    assert row["left_because"] == {"unexplained": 2}
    assert row["survived"] == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"functions": []}, " needs its functions, its tests and the process"),
        ({"tests": []}, " needs its functions, its tests and the process"),
        ({"process": " "}, " needs its functions, its tests and the process"),
        ({"by": "me"}, " needs exactly functions, process, tests"),
    ],
    ids=["no-functions", "no-tests", "no-process", "unknown-key"],
)
def test_a_process_target_without_its_tests_or_process_is_refused(tmp_path, change, message):
    good = {"functions": ["m.*"], "tests": ["t.py"], "process": "ours"}
    path = tmp_path / "process.json"
    path.write_text(json.dumps([good, {**good, **change}]))
    with pytest.raises(ValueError, match=re.escape(f"process.json[1]{message}")):
        mutation.load_process_targets(path)


def test_every_process_target_names_functions_that_exist_and_tests_that_start_a_server():
    import importlib

    root = Path(__file__).parent.parent
    targets = mutation.load_process_targets()
    assert targets, "gunicorn's worker, the consumer's supervisor and the intake's loop"
    for target in targets:
        for pattern in target.functions:
            # webhook.attribution.app.x_serve_consumer__mutmut_* -> serve_consumer in app
            head = pattern.split("__mutmut_")[0]
            module_name, _, function = head.rpartition(".")
            if function == "*":
                assert importlib.import_module(module_name), pattern
                continue
            module = importlib.import_module(module_name)
            if function.startswith("xǁ"):
                cls, method = function.split("ǁ")[1:]
                assert method == "*" or hasattr(getattr(module, cls), method), pattern
            else:
                assert hasattr(module, function.removeprefix("x_")), pattern
        for test in target.tests:
            text = (root / test).read_text()
            starts = ("subprocess", "ServerProcess", "tests.hostile_servers", "os.fork()")
            assert any(way in text for way in starts), test


def test_a_process_sample_takes_an_even_spread_of_every_function_and_leaves_none_out():
    names = [f"{SERVE}__mutmut_{n}" for n in range(1, 11)] + [f"{WORKER}.x_linger__mutmut_7"]
    assert mutation.every_nth(names, 3) == [
        f"{SERVE}__mutmut_1", f"{SERVE}__mutmut_4", f"{SERVE}__mutmut_7",
        f"{WORKER}.x_linger__mutmut_7",
    ]  # fmt: skip
    assert mutation.every_nth(names, None) == names


def test_each_process_mutant_s_verdict_is_recorded_as_it_comes(tmp_path):
    import subprocess

    recorded: list[tuple[str, str]] = []

    def run(command, env, **kwargs):
        return subprocess.CompletedProcess(command, int(env["MUTANT_UNDER_TEST"] != ""), "", "")

    def record(name: str, row: dict) -> None:
        recorded.append((name, row["status"]))

    names = [f"{SERVE}__mutmut_1", f"{SERVE}__mutmut_2"]
    target = process_target(f"{SERVE}__*")
    mutation.run_process_mutants(names, [target], tmp_path, run=run, workers=1, record=record)
    assert recorded == [(f"{SERVE}__mutmut_1", "killed"), (f"{SERVE}__mutmut_2", "killed")]
