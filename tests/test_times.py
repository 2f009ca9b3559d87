"""Times as the CLI, the consumer's API and the audit ingest read them: RFC 3339 or a
length of time ago, in ns since the epoch, within the signed 64 bits the store holds."""

from __future__ import annotations

import re

import pytest

from webhook.errors import MalformedAuditEvent
from webhook.sessions.audit import parse_time_ns as audit_time_ns
from webhook.times import MAX_NS, MIN_NS, parse_duration_ns, parse_time_ns, rfc3339_ns

NOW = 1_796_000_000 * 10**9


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2026-11-22T10:00:00Z", 1_795_341_600 * 10**9),
        ("2026-11-22T12:00:00+02:00", 1_795_341_600 * 10**9),
        ("2026-11-22T10:00:00", 1_795_341_600 * 10**9),  # no zone: UTC, as the audit log
        ("2026-11-22T10:00:00.123456Z", 1_795_341_600 * 10**9 + 123_456_000),
        ("1969-12-31T23:59:59.5Z", -500_000_000),
    ],
)
def test_an_rfc_3339_time_is_read_to_the_microsecond_in_utc(text, ns):
    assert rfc3339_ns(text) == ns
    assert parse_time_ns(text, NOW) == ns
    assert audit_time_ns(text, "stageTimestamp") == ns


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01T00:00:00Z", "", "10:00"])
def test_what_is_not_a_time_is_refused_by_name(text):
    with pytest.raises(ValueError, match=f"^{re.escape(repr(text))} is not an RFC 3339 time$"):
        rfc3339_ns(text)
    with pytest.raises(MalformedAuditEvent, match=f"^stageTimestamp {re.escape(repr(text))} is"):
        audit_time_ns(text, "stageTimestamp")


def test_an_audit_time_is_kept_only_within_the_64_bits_the_store_holds():
    # the first and last microsecond inside the range, and the ones just outside it
    assert audit_time_ns("1677-09-21T00:12:43.145225Z", "t") == -9_223_372_036_854_775_000
    assert audit_time_ns("2262-04-11T23:47:16.854775Z", "t") == 9_223_372_036_854_775_000
    for outside in ("1677-09-21T00:12:43.145224Z", "2262-04-11T23:47:16.854776Z"):
        with pytest.raises(MalformedAuditEvent, match=r"is out of range \(1677 to 2262\)$"):
            audit_time_ns(outside, "t")
    with pytest.raises(MalformedAuditEvent, match=r"^t '12' is not an RFC 3339 time$"):
        audit_time_ns(12, "t")  # type: ignore[arg-type]


def test_a_query_bound_outside_the_range_asks_for_everything_and_never_overflows():
    assert parse_time_ns("0001-01-01T00:00:00Z", NOW) == MIN_NS
    assert parse_time_ns("9999-12-31T23:59:59Z", NOW) == MAX_NS
    assert parse_time_ns("9" * 30 + "w", NOW) == MIN_NS


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("30m", 1800), ("12h", 43_200), ("90d", 7_776_000), ("2w", 1_209_600),
     (" 1h ", 3600)],
)  # fmt: skip
def test_a_length_of_time_is_read_in_its_unit_and_counts_back_from_now(text, seconds):
    assert parse_duration_ns(text) == seconds * 10**9
    assert parse_time_ns(text, NOW) == NOW - seconds * 10**9


def test_a_length_of_time_has_at_most_30_digits():
    assert parse_duration_ns("1" * 30 + "s") == int("1" * 30) * 10**9
    for text in ("1" * 31 + "s", "5y", "h", "-1h", "1.5h"):
        with pytest.raises(ValueError, match=r"is not a duration such as 90d, 12h or 30m$"):
            parse_duration_ns(text)


def test_an_audit_time_refused_is_quoted_in_at_most_40_characters():
    for text, why in (
        ("2026-" + "9" * 200, "is not an RFC 3339 time"),
        ("2263-01-01T00:00:00." + "0" * 200 + "Z", "is out of range (1677 to 2262)"),
        ([1] * 30, "is not an RFC 3339 time"),
    ):
        with pytest.raises(MalformedAuditEvent) as refused:
            audit_time_ns(text, "t")  # type: ignore[arg-type]
        assert str(refused.value) == f"t {str(text)[:40]!r} {why}"


def test_a_utc_time_is_shown_to_the_second_it_is_in_and_nothing_for_none():
    from webhook.times import format_utc

    assert format_utc(None) == ""
    second = 1_796_314_360 * 10**9
    assert format_utc(second + 999_999_999) == format_utc(second) == "2026-12-03T16:12:40Z"


@pytest.mark.parametrize(
    ("read", "text"),
    [
        (parse_duration_ns, "9" * 100 + "x"),
        (lambda t: parse_time_ns(t, 0), "y" * 100),
        (rfc3339_ns, "2026-" + "1" * 100),
    ],
)
def test_a_time_or_duration_refused_is_quoted_in_at_most_40_characters(read, text):
    with pytest.raises(ValueError, match=r"^'") as refused:
        read(text)
    assert str(refused.value).startswith(f"{text[:40]!r} is ")
