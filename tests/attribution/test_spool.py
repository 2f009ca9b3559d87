"""The forward spool: what waits for a downstream that is down survives a restart, leaves
only when acknowledged, and when full gives up its oldest items, counted."""

from __future__ import annotations

import sqlite3

import pytest

from webhook.attribution.spool import Spool
from webhook.errors import ConfigError


@pytest.fixture
def spool(tmp_path):
    opened = Spool(tmp_path / "forward.db", max_items=5)
    yield opened
    opened.close()


def bodies(items: list[tuple[int, bytes]]) -> list[bytes]:
    return [body for _, body in items]


def test_items_come_out_in_the_order_they_went_in(spool):
    spool.put_many([b"a", b"b"])
    spool.put_many([b"c"])
    assert bodies(spool.peek(10)) == [b"a", b"b", b"c"]
    assert bodies(spool.peek(2)) == [b"a", b"b"], "the oldest first, up to the limit"
    assert len(spool) == 3


def test_peek_after_an_id_hands_out_only_later_items_and_takes_nothing(spool):
    spool.put_many([b"a", b"b", b"c"])
    (first, _), (second, _), (third, _) = spool.peek(10)
    assert first < second < third
    assert spool.peek(10, after=first) == [(second, b"b"), (third, b"c")]
    assert spool.peek(10, after=third) == []
    assert len(spool) == 3, "peeking takes nothing away"


@pytest.mark.parametrize(
    ("acked", "left"),
    [
        ([0, 1], [b"c", b"d", b"e"]),  # a peeked batch: a contiguous run of ids
        ([0, 2], [b"b", b"d", b"e"]),  # alerts retried on their own schedule: gaps
        ([0, 1, 4], [b"c", b"d"]),  # two gaps: nothing between the ids may go
        ([0, 4], [b"b", b"c", b"d"]),
        ([3], [b"a", b"b", b"c", b"e"]),
        ([], [b"a", b"b", b"c", b"d", b"e"]),
    ],
    ids=["contiguous", "one-gap", "two-gaps", "ends", "one", "nothing"],
)
def test_only_the_items_acknowledged_leave(spool, acked, left):
    spool.put_many([b"a", b"b", b"c", b"d", b"e"])
    ids = [item_id for item_id, _ in spool.peek(10)]
    spool.ack([ids[i] for i in acked])
    assert bodies(spool.peek(10)) == left
    assert len(spool) == len(left)


def test_a_full_spool_gives_up_its_oldest_items_and_counts_them(spool):
    spool.put_many([b"1", b"2", b"3", b"4", b"5"])
    assert spool.dropped == 0, "full is not over the bound"
    spool.put_many([b"6", b"7"])
    assert bodies(spool.peek(10)) == [b"3", b"4", b"5", b"6", b"7"]
    assert spool.dropped == 2
    spool.put_many([b"8"])
    assert bodies(spool.peek(10)) == [b"4", b"5", b"6", b"7", b"8"]
    assert spool.dropped == 3


def test_a_spool_with_gaps_drops_only_what_is_over_the_bound(spool):
    # ids are no longer contiguous once items in the middle were acknowledged: the span
    # of ids is then larger than the count, and only the count decides
    spool.put_many([b"1", b"2", b"3", b"4", b"5"])
    ids = [item_id for item_id, _ in spool.peek(10)]
    spool.ack(ids[1:4])
    spool.put_many([b"6", b"7", b"8"])
    assert bodies(spool.peek(10)) == [b"1", b"5", b"6", b"7", b"8"]
    assert spool.dropped == 0
    spool.put_many([b"9"])
    assert bodies(spool.peek(10)) == [b"5", b"6", b"7", b"8", b"9"]
    assert spool.dropped == 1


def test_nothing_put_is_nothing_stored(spool):
    spool.put_many([])
    assert spool.peek(10) == [] and len(spool) == 0


def test_what_was_not_acknowledged_is_there_after_a_restart(tmp_path):
    first = Spool(tmp_path / "forward.db")
    first.put_many([b"a", b"b", b"c"])
    (done, _), *_ = first.peek(1)
    first.ack([done])
    first.close()
    again = Spool(tmp_path / "forward.db")
    assert bodies(again.peek(10)) == [b"b", b"c"]
    again.put_many([b"d"])
    ids = [item_id for item_id, _ in again.peek(10)]
    assert ids == sorted(ids) and ids[0] > done, "ids keep growing: none is handed out twice"
    again.close()


def test_a_spool_is_made_with_its_folders_and_in_wal_mode(tmp_path):
    # WAL: the intake's writers append while the forwarder reads and acks
    spool = Spool(tmp_path / "state" / "forward" / "spool.db")
    spool.put_many([b"a"])
    assert spool._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    spool.close()


def test_a_spool_that_cannot_be_opened_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^cannot open spool .*/file/forward\.db: "):
        Spool(tmp_path / "file" / "forward.db")


class LockedConnection:
    """A connection whose switch to WAL answers "database is locked" ``times`` times, as
    SQLite may at once, without its busy handler, while another process creates the
    schema; or fails with ``error`` for good."""

    def __init__(self, times: int = 1, error: str = "database is locked") -> None:
        self.times, self.error = times, error
        self.statements: list[str] = []
        self.closed = False

    def execute(self, statement: str, *args: object) -> None:
        self.statements.append(statement)
        if statement.startswith("PRAGMA journal_mode") and self.times:
            self.times -= 1
            raise sqlite3.OperationalError(self.error)

    def close(self) -> None:
        self.closed = True


def test_a_locked_database_is_waited_for_not_taken_for_an_error(tmp_path, monkeypatch):
    from webhook import wal

    fake = LockedConnection(times=2)
    monkeypatch.setattr(wal.sqlite3, "connect", lambda *a, **k: fake)
    assert wal.connect_wal(tmp_path / "forward.db") is fake
    assert fake.statements == ["PRAGMA journal_mode=WAL"] * 3 + ["PRAGMA synchronous=NORMAL"]
    assert not fake.closed


def test_any_other_database_error_is_raised_at_once_and_the_connection_closed(
    tmp_path, monkeypatch
):
    from webhook import wal

    fake = LockedConnection(times=5, error="disk I/O error")
    monkeypatch.setattr(wal.sqlite3, "connect", lambda *a, **k: fake)
    with pytest.raises(sqlite3.OperationalError, match=r"^disk I/O error$"):
        wal.connect_wal(tmp_path / "forward.db")
    assert fake.statements == ["PRAGMA journal_mode=WAL"] and fake.closed
