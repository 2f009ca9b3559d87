"""tools/mutation.py sorts the mutants left alive; a wrong rule would hide a gap."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "mutation_tool", Path(__file__).parent.parent / "tools" / "mutation.py"
)
assert _SPEC is not None and _SPEC.loader is not None
mutation = importlib.util.module_from_spec(_SPEC)
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
        ("x = 1", "x = 2", "unexplained"),
        ('raise X("a")', "raise X(None)", "unexplained"),
    ],
)
def test_a_survivor_is_explained_only_by_a_rule_that_holds(removed, added, why):
    assert mutation.classify("survived", [removed], [added]) == why


def test_timeouts_are_caught_and_other_statuses_are_not_explained():
    assert mutation.classify("timeout", [], []) == "timeout"
    assert mutation.classify("no tests", ["a"], ["b"]) == "unexplained"
    assert mutation.classify("survived", ["a", "b"], ["a"]) == "unexplained"
