"""Showing attacker-controlled text safely: pure helpers for every reader and log line.

Command lines, pod names, user names and alert output come from the people being audited.
A newline can forge a line in a timeline; an ANSI/OSC escape can rewrite an investigator's
terminal; a bidi override can reorder what is read. They are shown as escapes instead.
"""

from __future__ import annotations

import re

#: C0 controls (tab included), DEL, C1 controls, and the Unicode bidi/isolate overrides
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: the longest value one log field may carry
LOG_FIELD_CHARS = 256


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every control or bidi character written as an escape (``\\x1b``).

    A backslash is doubled first, so an escape shown can always be told from one typed.
    """
    return _UNSAFE.sub(_escape, text.replace("\\", "\\\\"))


def capped(text: str, limit: int = LOG_FIELD_CHARS) -> str:
    """At most ``limit`` characters, with the cut marked and the size that was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[cut {len(text) - limit} chars]"


def loggable(value: object, limit: int = LOG_FIELD_CHARS) -> str:
    """A value as one log field: escaped, then capped."""
    return capped(visible(str(value)), limit)
