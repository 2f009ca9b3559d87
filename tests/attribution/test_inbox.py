"""The inbox log: what the intake acknowledged stays on disk until the pipeline is done."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.attribution.inbox import InboxLogReader, InboxWriter
from webhook.errors import ConfigError, SpoolFull


def lines(tag: str, n: int) -> list[bytes]:
    return [f'{{"n":"{tag}-{i}"}}'.encode() for i in range(n)]


def read_all(reader: InboxLogReader) -> list[tuple[int, bytes]]:
    items: list[tuple[int, bytes]] = []
    while batch := reader.read(100):
        items.extend(batch)
    return items


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.log"))


def test_lines_come_out_in_order_once_each(tmp_path):
    writer = InboxWriter(tmp_path)
    writer.put_many(lines("a", 3))
    writer.put_many(lines("b", 2))
    reader = InboxLogReader(tmp_path)
    items = read_all(reader)
    assert [body for _, body in items] == lines("a", 3) + lines("b", 2)
    positions = [position for position, _ in items]
    assert positions == sorted(set(positions)), "each line has its own position, in order"
    assert reader.read(100) == [], "nothing twice"


def test_a_line_written_while_the_reader_waits_is_read_next(tmp_path):
    writer = InboxWriter(tmp_path)
    reader = InboxLogReader(tmp_path)
    assert reader.read(10) == []
    writer.put_many(lines("late", 1))
    assert [body for _, body in reader.read(10)] == lines("late", 1)


def test_what_was_not_acknowledged_comes_again_after_a_crash(tmp_path):
    writer = InboxWriter(tmp_path)
    writer.put_many(lines("x", 4))
    reader = InboxLogReader(tmp_path, save_every=0)
    items = read_all(reader)
    reader.ack([items[0][0], items[1][0]])
    # kill -9: no close(), the cursor is what was saved on the last acknowledgement
    again = read_all(InboxLogReader(tmp_path))
    assert [body for _, body in again] == lines("x", 4)[2:]


def test_a_held_item_keeps_the_cursor_so_it_and_what_followed_come_again(tmp_path):
    writer = InboxWriter(tmp_path)
    writer.put_many(lines("x", 3))
    reader = InboxLogReader(tmp_path, save_every=0)
    first, second, third = read_all(reader)
    reader.ack([second[0], third[0]])  # the first is held for a late root
    again = read_all(InboxLogReader(tmp_path))
    # at-least-once: the held one, and the ones after it that were already delivered
    assert [body for _, body in again] == lines("x", 3)
    reader.ack([first[0]])
    assert read_all(InboxLogReader(tmp_path)) == []


def test_close_saves_the_cursor_that_was_not_saved_yet(tmp_path):
    InboxWriter(tmp_path).put_many(lines("x", 2))
    reader = InboxLogReader(tmp_path, save_every=3600)
    reader.ack([position for position, _ in read_all(reader)])
    reader.close()
    assert read_all(InboxLogReader(tmp_path)) == []


def test_a_full_inbox_refuses_whole_bodies_and_keeps_what_it_holds(tmp_path):
    writer = InboxWriter(tmp_path, max_bytes=100)
    writer.put_many(lines("kept", 6))  # 6 x 15 bytes
    with pytest.raises(SpoolFull, match="holds 90 of 100 bytes: 30 more do not fit"):
        writer.put_many(lines("late", 2))
    assert [body for _, body in read_all(InboxLogReader(tmp_path))] == lines("kept", 6)


def test_space_comes_back_once_the_reader_has_passed_a_segment(tmp_path):
    writer = InboxWriter(tmp_path, max_bytes=100, segment_bytes=30)
    for i in range(7):
        writer.put_many(lines(f"s{i}", 1))  # 13 bytes each, a new segment every 3
    with pytest.raises(SpoolFull):
        writer.put_many(lines("more", 3))
    reader = InboxLogReader(tmp_path, save_every=0)
    reader.ack([position for position, _ in read_all(reader)])
    assert len(segments(tmp_path)) == 1, "the segments before the cursor are deleted"
    writer.put_many(lines("more", 3))
    assert [body for _, body in read_all(reader)] == lines("more", 3)


def test_the_reader_follows_the_writer_across_segments(tmp_path):
    writer = InboxWriter(tmp_path, segment_bytes=40)
    reader = InboxLogReader(tmp_path, save_every=0)
    got: list[bytes] = []
    for i in range(10):
        writer.put_many(lines(f"r{i}", 2))
        batch = reader.read(100)
        reader.ack([position for position, _ in batch])
        got.extend(body for _, body in batch)
    assert got == [line for i in range(10) for line in lines(f"r{i}", 2)]
    assert len(segments(tmp_path)) <= 2


def test_a_second_writer_on_the_same_inbox_is_refused(tmp_path):
    InboxWriter(tmp_path)
    with pytest.raises(
        ConfigError,
        match="has another writer: is a second consumer running with the same --state-dir",
    ):
        InboxWriter(tmp_path)


def test_a_restarted_writer_starts_a_new_segment_and_a_cut_line_is_handed_out(tmp_path):
    first = InboxWriter(tmp_path)
    first.put_many(lines("before", 1))
    with (tmp_path / segments(tmp_path)[-1]).open("ab") as segment:
        segment.write(b'{"cut by a cra')  # kill -9 in the middle of a line
    first.close()
    second = InboxWriter(tmp_path)
    second.put_many(lines("after", 1))
    assert len(segments(tmp_path)) == 2
    bodies = [body for _, body in read_all(InboxLogReader(tmp_path))]
    # the cut line goes to the pipeline, which dead-letters it as not JSON: nothing hidden
    assert bodies == [*lines("before", 1), b'{"cut by a cra', *lines("after", 1)]


def test_a_failed_write_takes_back_its_part_so_no_half_body_stays(tmp_path, monkeypatch):
    writer = InboxWriter(tmp_path)
    writer.put_many(lines("ok", 1))
    real_write = os.write

    def disk_fills_up(fd: int, data: bytes) -> int:
        if len(data) > 20:
            real_write(fd, data[:20])
            return 20
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("webhook.attribution.inbox.os.write", disk_fills_up)
    with pytest.raises(OSError, match="No space left"):
        writer.put_many(lines("lost", 3))
    monkeypatch.undo()
    writer.put_many(lines("next", 1))
    bodies = [body for _, body in read_all(InboxLogReader(tmp_path))]
    assert bodies == [*lines("ok", 1), *lines("next", 1)]


def test_a_damaged_cursor_is_a_clear_error_naming_the_file(tmp_path):
    InboxWriter(tmp_path).put_many(lines("x", 1))
    (tmp_path / "cursor").write_text("garbage")
    with pytest.raises(ConfigError, match=r"cursor .*cursor is damaged \('garbage'\)"):
        InboxLogReader(tmp_path)


def test_backlog_counts_the_bytes_not_yet_handled(tmp_path):
    writer = InboxWriter(tmp_path, segment_bytes=30)
    writer.put_many(lines("b", 5))  # 5 x 12 bytes, in one segment (rolls before a write)
    reader = InboxLogReader(tmp_path, save_every=0)
    assert reader.backlog_bytes() == 60
    items = read_all(reader)
    reader.ack([items[0][0], items[1][0]])
    assert reader.backlog_bytes() == 36


@pytest.mark.parametrize("first", ["writer", "reader"])
def test_inbox_files_are_private(tmp_path, first):
    if first == "reader":
        InboxLogReader(tmp_path / "inbox")
    writer = InboxWriter(tmp_path / "inbox")
    writer.put_many(lines("p", 1))
    reader = InboxLogReader(tmp_path / "inbox", save_every=0)
    reader.ack([position for position, _ in read_all(reader)])
    assert (tmp_path / "inbox").stat().st_mode & 0o077 == 0
    for path in (tmp_path / "inbox").iterdir():
        assert path.stat().st_mode & 0o077 == 0, path


# an operation: ("put", n) appends n lines, ("read", n) reads up to n, ("ack", i) acks the
# i-th outstanding item, ("crash",) drops the reader without close and opens a new one
operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(1, 4)),
        st.tuples(st.just("read"), st.integers(1, 6)),
        st.tuples(st.just("ack"), st.integers(0, 10)),
        st.tuples(st.just("crash")),
    ),
    max_size=40,
)


@settings(max_examples=60)
@given(operations)
def test_nothing_acknowledged_by_the_intake_is_lost_whatever_the_order(tmp_path_factory, ops):
    """Every line put and not acked by the pipeline is handed out again after a crash."""
    directory = tmp_path_factory.mktemp("inbox")
    writer = InboxWriter(directory, segment_bytes=48)
    reader = InboxLogReader(directory, save_every=0)
    put: list[bytes] = []
    acked: set[bytes] = set()
    outstanding: list[tuple[int, bytes]] = []
    for op in ops:
        if op[0] == "put":
            new = lines(f"p{len(put)}", op[1])
            writer.put_many(new)
            put.extend(new)
        elif op[0] == "read":
            outstanding.extend(reader.read(op[1]))
        elif op[0] == "ack" and outstanding:
            position, body = outstanding.pop(op[1] % len(outstanding))
            reader.ack([position])
            acked.add(body)
        elif op[0] == "crash":
            reader = InboxLogReader(directory, save_every=0)
            outstanding = []
    delivered = [body for _, body in read_all(reader)]
    assert delivered == [line for line in put if line in set(delivered)], "in order"
    recovered = {body for _, body in read_all(InboxLogReader(directory))}
    assert set(put) - acked <= recovered, "nothing unacknowledged is lost"


def test_a_writer_makes_the_inbox_folder_and_its_parents(tmp_path):
    InboxWriter(tmp_path / "state" / "inbox").put_many(lines("x", 1))
    assert len(read_all(InboxLogReader(tmp_path / "state" / "inbox"))) == 1


def test_a_reader_started_before_the_first_segment_exists_reads_it(tmp_path):
    # the pipeline process is forked before the intake opens the inbox
    reader = InboxLogReader(tmp_path / "state" / "inbox")
    assert reader.read(10) == []
    writer = InboxWriter(tmp_path / "state" / "inbox")
    writer.put_many(lines("first", 2))
    assert [body for _, body in reader.read(10)] == lines("first", 2)


def test_read_hands_out_at_most_the_limit(tmp_path):
    InboxWriter(tmp_path).put_many(lines("x", 5))
    reader = InboxLogReader(tmp_path)
    assert [body for _, body in reader.read(2)] == lines("x", 5)[:2]
    assert [body for _, body in reader.read(2)] == lines("x", 5)[2:4]
    assert [body for _, body in reader.read(2)] == lines("x", 5)[4:]


def test_an_inbox_whose_oldest_segments_were_removed_resumes_at_the_oldest_left(tmp_path):
    writer = InboxWriter(tmp_path, segment_bytes=10)
    for i in range(3):
        writer.put_many(lines(f"s{i}", 1))  # a segment each
    reader = InboxLogReader(tmp_path, save_every=0)
    (first, _), *_ = reader.read(1)
    reader.ack([first])
    for name in segments(tmp_path)[:2]:  # removed by hand, cursor and all
        (tmp_path / name).unlink()
    assert [body for _, body in read_all(InboxLogReader(tmp_path))] == lines("s2", 1)


def test_files_that_are_not_segments_are_left_alone(tmp_path):
    writer = InboxWriter(tmp_path)
    writer.put_many(lines("real", 1))
    (tmp_path / "000000000099.tmp").write_bytes(b'{"stray": 1}\n')
    (tmp_path / "notes.log").write_bytes(b'{"stray": 2}\n')
    (tmp_path / "000000000098.log.bak").write_bytes(b'{"stray": 3}\n')
    writer.put_many(lines("more", 1))
    assert [body for _, body in read_all(InboxLogReader(tmp_path))] == [
        *lines("real", 1),
        *lines("more", 1),
    ]


def test_positions_survive_a_restart_whatever_the_line_lengths(tmp_path):
    writer = InboxWriter(tmp_path)
    bodies = [b'{"a":12}', b'{"bb":22}', b'{"ccc":333}', b'{"d":4}']  # 9, 10, 12, 8 bytes
    writer.put_many(bodies)
    reader = InboxLogReader(tmp_path, save_every=0)
    items = read_all(reader)
    reader.ack([items[0][0]])  # the cursor now sits at an odd offset, 9, then at 19
    reader.ack([items[1][0]])
    assert reader.backlog_bytes() == 12 + 8
    assert [body for _, body in read_all(InboxLogReader(tmp_path))] == bodies[2:]


def test_the_cursor_is_saved_at_most_every_save_every_seconds(tmp_path):
    InboxWriter(tmp_path).put_many(lines("x", 3))
    reader = InboxLogReader(tmp_path, save_every=3600)
    reader.ack([position for position, _ in read_all(reader)])
    # a crash now: the acks were not saved yet, so everything comes again (at-least-once)
    assert len(read_all(InboxLogReader(tmp_path))) == 3
    assert not (tmp_path / "cursor").exists()


def test_a_line_written_just_before_the_writer_moved_on_is_not_skipped(tmp_path, monkeypatch):
    from webhook.attribution import inbox

    writer = InboxWriter(tmp_path, segment_bytes=1)
    writer.put_many(lines("early", 1))
    reader = InboxLogReader(tmp_path)
    assert [body for _, body in reader.read(10)] == lines("early", 1)
    real_segments = inbox._segments
    raced: list[bool] = []

    def writer_appends_then_rolls(directory):
        # between the reader's end of file and its look for a newer segment, the writer
        # appends one last body to the old segment, then starts a new one
        if not raced:
            raced.append(True)
            with inbox._segment_path(directory, real_segments(directory)[-1]).open("ab") as old:
                old.write(b'{"n":"last"}\n')
            writer.put_many(lines("next", 1))
        return real_segments(directory)

    monkeypatch.setattr(inbox, "_segments", writer_appends_then_rolls)
    assert [body for _, body in read_all(reader)] == [b'{"n":"last"}', *lines("next", 1)]


def test_the_cut_line_is_acknowledged_like_any_other(tmp_path):
    first = InboxWriter(tmp_path)
    with (tmp_path / segments(tmp_path)[-1]).open("ab") as segment:
        segment.write(b'{"cut')
    first.close()
    InboxWriter(tmp_path).put_many(lines("after", 1))
    reader = InboxLogReader(tmp_path, save_every=0)
    items = read_all(reader)
    assert [body for _, body in items] == [b'{"cut', *lines("after", 1)]
    reader.ack([position for position, _ in items])
    assert read_all(InboxLogReader(tmp_path)) == []


def test_a_body_that_fits_exactly_is_accepted(tmp_path):
    writer = InboxWriter(tmp_path, max_bytes=30)
    writer.put_many(lines("a", 2))  # 2 x 12 bytes
    with pytest.raises(SpoolFull):
        writer.put_many([b'{"n":"b-0"}'])  # 12 more: 36
    writer.put_many([b"[1,2]"])  # 6 more with its newline: exactly 30
    assert len(read_all(InboxLogReader(tmp_path))) == 3


def test_a_segment_stops_growing_once_it_reaches_the_segment_size(tmp_path):
    writer = InboxWriter(tmp_path, segment_bytes=24)
    writer.put_many(lines("a", 2))  # 24 bytes: full
    writer.put_many(lines("b", 1))
    sizes = [(tmp_path / name).stat().st_size for name in segments(tmp_path)]
    assert sizes == [24, 12]


def test_backlog_spans_every_segment_after_the_cursor_and_is_0_when_all_is_handled(tmp_path):
    writer = InboxWriter(tmp_path, segment_bytes=24)
    writer.put_many(lines("a", 2))
    writer.put_many(lines("b", 2))  # two segments of 24
    reader = InboxLogReader(tmp_path, save_every=0)
    items = read_all(reader)
    reader.ack([items[0][0]])
    assert reader.backlog_bytes() == 12 + 24
    reader.ack([position for position, _ in items])
    assert reader.backlog_bytes() == 0


def test_a_writer_closes_cleanly_once_and_twice(tmp_path):
    writer = InboxWriter(tmp_path)
    fd = writer._fd
    writer.close()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)
    writer.close()  # a second close is harmless
    InboxWriter(tmp_path).close()  # and the lock is free for the next writer
    os.fstat(1)  # stdout is still there


@pytest.mark.parametrize("cls", [InboxWriter, InboxLogReader])
def test_an_inbox_that_cannot_be_made_is_a_clear_error(tmp_path, cls):
    (tmp_path / "state").write_text("a file, not a folder")
    with pytest.raises(ConfigError, match=r"cannot open the inbox .*/state/inbox: "):
        cls(tmp_path / "state" / "inbox")


def test_space_the_reader_freed_is_usable_to_the_last_byte(tmp_path):
    writer = InboxWriter(tmp_path, max_bytes=36, segment_bytes=12)
    for tag in ("a", "b", "c"):
        writer.put_many(lines(tag, 1))  # 12 bytes each, a segment each: full
    reader = InboxLogReader(tmp_path, save_every=0)
    first, second, _ = read_all(reader)
    reader.ack([first[0], second[0]])
    assert len(segments(tmp_path)) == 1, "the reader deleted the segments it passed"
    writer.put_many(lines("d", 2))  # 24 more: exactly 36 again
    with pytest.raises(SpoolFull, match="holds 36 of 36 bytes: 12 more do not fit"):
        writer.put_many(lines("e", 1))
    assert [body for _, body in read_all(reader)] == lines("d", 2)
