"""``--since 24h`` and friends (pure: ``now`` is passed in)."""

from __future__ import annotations

import datetime
import re

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration_ns(text: str) -> int:
    """``90d``, ``12h``, ``30m``: a length of time in ns; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 90d, 12h or 30m")
    return int(match.group(1)) * _UNITS[match.group(2)] * 1_000_000_000


def parse_time_ns(text: str, now_ns: int) -> int:
    """A duration ago (``24h``) or an RFC 3339 time, as ns since the epoch (UTC)."""
    text = text.strip()
    if _DURATION.fullmatch(text):
        return now_ns - parse_duration_ns(text)
    try:
        stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 24h, 7d, 2w) nor an RFC 3339 time "
            "(2026-11-22T10:00:00Z)"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return int(stamp.timestamp() * 1_000_000) * 1000


def format_utc(ns: int | None) -> str:
    """``2026-11-22T10:00:00Z``: UTC, with the zone spelled out."""
    if ns is None:
        return ""
    stamp = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
