"""``--since 24h`` and friends (pure: ``now`` is passed in)."""

from __future__ import annotations

import datetime
import re

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: every time the store holds is in a signed 64-bit count of ns (1677 to 2262)
MIN_NS, MAX_NS = -(2**63), 2**63 - 1


def clamped(ns: int) -> int:
    """A query bound moved into the range the store holds: ``since=0001-01-01`` or
    ``since=99999999999999999w`` ask for everything, and get it (never an overflow)."""
    return min(max(ns, MIN_NS), MAX_NS)


def parse_duration_ns(text: str) -> int:
    """``90d``, ``12h``, ``30m``: a length of time in ns; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if not match or len(match.group(1)) > 30:
        raise ValueError(f"{text[:40]!r} is not a duration such as 90d, 12h or 30m")
    return int(match.group(1)) * _UNITS[match.group(2)] * 1_000_000_000


def parse_time_ns(text: str, now_ns: int) -> int:
    """A duration ago (``24h``) or an RFC 3339 time, as ns since the epoch (UTC), within
    the range the store holds (:func:`clamped`)."""
    text = text.strip()
    if _DURATION.fullmatch(text):
        return clamped(now_ns - parse_duration_ns(text))
    try:
        return clamped(rfc3339_ns(text))
    except ValueError:
        raise ValueError(
            f"{text[:40]!r} is neither a duration (30m, 24h, 7d, 2w) nor an RFC 3339 time "
            "(2026-11-22T10:00:00Z)"
        ) from None


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def rfc3339_ns(text: str) -> int:
    """An RFC 3339 time (``Z`` or an offset; none is UTC) as ns since the epoch, to the
    microsecond Python reads; ValueError when it is not one."""
    try:
        stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=datetime.UTC)
        # whole seconds apart: a float of ns since the epoch would round away the last digits
        seconds = (stamp - _EPOCH) // datetime.timedelta(seconds=1)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{text[:40]!r} is not an RFC 3339 time") from exc
    return seconds * 1_000_000_000 + stamp.microsecond * 1000


def format_utc(ns: int | None) -> str:
    """``2026-11-22T10:00:00Z``: UTC, with the zone spelled out."""
    if ns is None:
        return ""
    try:
        stamp = _EPOCH + datetime.timedelta(microseconds=ns // 1000)
    except OverflowError:  # past year 9999: no datetime holds it
        return f"{ns} ns"
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
