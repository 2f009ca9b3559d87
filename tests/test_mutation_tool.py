"""tools/mutation.py sorts the mutants left alive; a wrong rule would hide a gap."""

from __future__ import annotations

import importlib.util
import json
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
    assert mutation.classify("no tests", ["a"], ["b"]) == "unexplained"
    assert mutation.classify("survived", ["a", "b"], ["a"]) == "unexplained"


LEARN = "webhook.lineage.xǁAttributorǁlearn"


def test_a_reviewed_equivalent_explains_only_the_mutant_it_was_written_for():
    entry = mutation.Equivalent(LEARN, ("self.n += 1",), ("self.n += 2",), "any change works")
    assert entry.matches(f"{LEARN}__mutmut_39", ["self.n += 1"], ["self.n += 2"])
    # the same diff in another function, or another diff here, is not what was reviewed
    assert not entry.matches("webhook.lineage.x_other__mutmut_39", ["self.n += 1"], ["self.n += 2"])
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
    with pytest.raises(ValueError, match=r"equivalents.json\[0\] needs function, removed"):
        mutation.load_equivalents(path)


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
