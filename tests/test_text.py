from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhook.text import capped, loggable, visible


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text, with commas", "plain text, with commas"),
        ("line\nforged", "line\\nforged"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("\x9b31m", "\\x9b31m"),
        ("abc\u202edef", "abc\\u202edef"),
        ("a\\nb", "a\\\\nb"),
        ("tab\there", "tab\\there"),
    ],
)
def test_control_and_bidi_characters_are_shown_as_escapes(raw, shown):
    assert visible(raw) == shown


@given(st.text())
def test_nothing_visible_can_move_the_cursor_or_break_a_line(text):
    shown = visible(text)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in shown)
    assert "\u202e" not in shown and "\u2028" not in shown


def test_a_capped_field_marks_the_cut_and_its_size():
    assert capped("x" * 70_000, 256) == "x" * 256 + "...[cut 69744 chars]"
    assert capped("short") == "short"
    assert len(loggable("p" * 70_000)) < 300


def test_a_field_of_exactly_the_limit_is_not_cut_and_one_more_is():
    assert capped("x" * 256) == "x" * 256
    assert capped("x" * 257) == "x" * 256 + "...[cut 1 chars]"


def test_a_loggable_field_keeps_the_limit_it_is_given():
    assert loggable("p" * 20, limit=8) == "pppppppp...[cut 12 chars]"
    assert loggable("a\nb" * 100, limit=4) == "a\\nb...[cut 396 chars]", "escaped, then cut"
