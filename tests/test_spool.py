"""The spool record format: real segment files in tmp_path, a real writer thread."""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from supervisor import spool
from supervisor.spool import Position, Record, SpoolReader, SpoolWriter
from tests.harness import wait_for
from tests.helpers import SMALL_DISK, fill_disk

DEADLINE = 10.0


def read_all(reader: SpoolReader, max_bytes: int = 1 << 20) -> list[tuple[Record, Position]]:
    """Every record the reader can return now, over as many read() calls as it takes."""
    items: list[tuple[Record, Position]] = []
    while batch := reader.read(max_bytes):
        items.extend(batch)
    return items


def without_rotations(items: list[tuple[Record, Position]]) -> list[Record]:
    return [record for record, _ in items if record.kind != spool.ROTATE]


def payloads(rng: random.Random, count: int, max_size: int = 300) -> list[bytes]:
    """Random payloads, with NUL bytes and invalid UTF-8 made certain."""
    out = [b"\x00", b"\xff\xfe\xc3(", b"line\x00with nul\n", b"\x80" * 7, b""]
    while len(out) < count:
        out.append(rng.randbytes(rng.randrange(1, max_size)))
    return out[:count]


@pytest.fixture
def session_dir(tmp_path: Path) -> Path:
    path = tmp_path / "session"
    path.mkdir()
    return path


def test_records_round_trip_byte_exact(session_dir: Path) -> None:
    """Random bytes, NUL and invalid UTF-8 come back from the reader exactly as the writer appended them."""
    rng = random.Random(1234)
    written = []
    writer = SpoolWriter(session_dir, segment_bytes=1 << 20, max_segments=4)
    for index, data in enumerate(payloads(rng, 200)):
        kind = spool.STDOUT if index % 3 else spool.STDERR
        timestamp = 1_700_000_000.0 + index / 7
        writer.append(kind, data, timestamp)
        written.append(Record(kind, timestamp, data))
    writer.append_event(spool.EXIT, {"exit_code": 3, "signal": None})
    writer.close()

    reader = SpoolReader(session_dir, Position(0, 0))
    try:
        items = read_all(reader, max_bytes=4096)
    finally:
        reader.close()

    records = [record for record, _ in items]
    assert records[:-1] == written
    assert records[-1].kind == spool.EXIT
    assert json.loads(records[-1].data) == {"exit_code": 3, "signal": None}
    assert b"".join(r.data for r in records if r.kind == spool.STDOUT) == b"".join(
        r.data for r in written if r.kind == spool.STDOUT
    )


@pytest.mark.parametrize("cut", [1, spool.HEADER.size - 1, spool.HEADER.size, spool.HEADER.size + 5])
def test_incomplete_trailing_record_is_returned_only_once_completed(session_dir: Path, cut: int) -> None:
    """A record whose bytes are only partly written is not returned until the rest arrives, then exactly once."""
    writer = SpoolWriter(session_dir, segment_bytes=1 << 20, max_segments=4)
    writer.append(spool.STDOUT, b"first\n", 1.0)
    writer.close()
    second = spool.encode(spool.STDOUT, b"second line, written in two parts\n", 2.0)
    path = spool.segment_path(session_dir, 0)
    first_end = path.stat().st_size

    reader = SpoolReader(session_dir, Position(0, 0))
    try:
        with open(path, "ab") as segment:
            segment.write(second[:cut])
        items = reader.read(1 << 20)
        assert items == [(Record(spool.STDOUT, 1.0, b"first\n"), Position(0, first_end))]
        assert reader.read(1 << 20) == []

        with open(path, "ab") as segment:
            segment.write(second[cut:])
        items = reader.read(1 << 20)
        assert items == [
            (Record(spool.STDOUT, 2.0, b"second line, written in two parts\n"), Position(0, first_end + len(second)))
        ]
        assert reader.read(1 << 20) == []
    finally:
        reader.close()


def test_record_larger_than_the_read_budget_is_returned_by_one_read(session_dir: Path) -> None:
    """A complete record longer than max_bytes comes back from a single read() instead of an empty list."""
    big = bytes(range(256)) * 40  # 10 KiB, with NUL and every other byte value
    writer = SpoolWriter(session_dir, segment_bytes=1 << 20, max_segments=4)
    writer.append(spool.STDOUT, big, 1.0)
    writer.append(spool.STDOUT, b"small\n", 2.0)
    writer.close()

    reader = SpoolReader(session_dir, Position(0, 0))
    try:
        first = reader.read(1000)
        assert [record for record, _ in first][:1] == [Record(spool.STDOUT, 1.0, big)]
        rest = first[1:] + reader.read(1000)
        assert [record for record, _ in rest] == [Record(spool.STDOUT, 2.0, b"small\n")]
        assert reader.read(1000) == []
    finally:
        reader.close()


def write_rotating_spool(session_dir: Path, count: int, segment_bytes: int = 256) -> list[Record]:
    rng = random.Random(99)
    writer = SpoolWriter(session_dir, segment_bytes=segment_bytes, max_segments=1000)
    written = []
    for index, data in enumerate(payloads(rng, count, max_size=120)):
        record = Record(spool.STDOUT if index % 2 else spool.STDERR, 1000.0 + index, data)
        writer.append(record.kind, record.data, record.timestamp)
        written.append(record)
    writer.close()
    return written


def test_reader_follows_rotation_across_segments_in_order(session_dir: Path) -> None:
    """With small segments the writer rotates and the reader returns every record once, in order, across segments."""
    written = write_rotating_spool(session_dir, 120)
    segments = spool.list_segments(session_dir)
    assert len(segments) >= 5
    assert segments == list(range(len(segments)))

    reader = SpoolReader(session_dir, Position(0, 0))
    try:
        # A small budget makes records straddle read() calls as well as segments.
        items = read_all(reader, max_bytes=100)
    finally:
        reader.close()

    assert without_rotations(items) == written
    rotations = [position for record, position in items if record.kind == spool.ROTATE]
    assert rotations == [Position(number, 0) for number in segments[1:]]
    assert reader.position == Position(segments[-1], spool.segment_path(session_dir, segments[-1]).stat().st_size)


def test_positions_point_just_after_each_record(session_dir: Path) -> None:
    """Each returned position is the end of its record in its segment file (or the start of the next segment after a rotation)."""
    write_rotating_spool(session_dir, 60)
    reader = SpoolReader(session_dir, Position(0, 0))
    try:
        items = read_all(reader)
    finally:
        reader.close()

    previous = Position(0, 0)
    for record, position in items:
        assert position > previous
        if record.kind == spool.ROTATE:
            assert position == Position(previous.segment + 1, 0)
            end = previous.offset + spool.HEADER.size
            assert spool.segment_path(session_dir, previous.segment).stat().st_size == end
        else:
            assert position.segment == previous.segment
            encoded = spool.segment_path(session_dir, position.segment).read_bytes()[previous.offset : position.offset]
            assert spool.decode(encoded) == ([record], len(encoded))
        previous = position


def test_reader_started_at_any_returned_position_continues_with_the_next_record(session_dir: Path) -> None:
    """A new reader started at any position the reader returned yields exactly the records after it: none lost, none twice."""
    write_rotating_spool(session_dir, 80)
    reader = SpoolReader(session_dir, Position(0, 0))
    try:
        items = read_all(reader)
    finally:
        reader.close()

    for index, (_, position) in enumerate(items):
        resumed = SpoolReader(session_dir, position)
        try:
            assert read_all(resumed, max_bytes=150) == items[index + 1 :], f"resuming at {position}"
        finally:
            resumed.close()


def test_reader_waits_for_the_next_segment_after_a_rotation(session_dir: Path) -> None:
    """After a ROTATE record the reader returns nothing until the next segment exists, then reads it from its start."""
    with open(spool.segment_path(session_dir, 0), "wb") as segment:
        segment.write(spool.encode(spool.STDOUT, b"before\n", 1.0) + spool.encode(spool.ROTATE, b"", 2.0))
    reader = SpoolReader(session_dir, Position(0, 0))
    try:
        kinds = [(record.kind, position) for record, position in reader.read(1 << 20)]
        after_first = spool.HEADER.size + len(b"before\n")
        assert kinds == [(spool.STDOUT, Position(0, after_first)), (spool.ROTATE, Position(1, 0))]
        assert reader.read(1 << 20) == []

        with open(spool.segment_path(session_dir, 1), "wb") as segment:
            segment.write(spool.encode(spool.STDOUT, b"after\n", 3.0))
        end = spool.HEADER.size + len(b"after\n")
        assert reader.read(1 << 20) == [(Record(spool.STDOUT, 3.0, b"after\n"), Position(1, end))]
    finally:
        reader.close()


def test_delete_segments_before_removes_only_fully_ingested_segments(session_dir: Path) -> None:
    """Deleting before the committed segment removes the segments below it and keeps the one being read and later ones."""
    written = write_rotating_spool(session_dir, 100)
    segments = spool.list_segments(session_dir)
    assert len(segments) >= 4
    reader = SpoolReader(session_dir, Position(0, 0))
    try:
        items = read_all(reader)
    finally:
        reader.close()
    # Stop part-way into segment 2: segments 0 and 1 are wholly ingested, 2 is not.
    index, committed = next((i, p) for i, (r, p) in enumerate(items) if p.segment == 2 and p.offset > 0)

    spool.delete_segments_before(session_dir, committed.segment)

    assert spool.list_segments(session_dir) == segments[2:]
    resumed = SpoolReader(session_dir, committed)
    try:
        assert without_rotations(read_all(resumed)) == without_rotations(items[index + 1 :])
    finally:
        resumed.close()
    assert without_rotations(items[: index + 1]) + without_rotations(items[index + 1 :]) == written


def test_a_damaged_header_raises_corrupt_spool(session_dir: Path) -> None:
    """A header byte changed on disk makes the reader raise CorruptSpool instead of misreading what follows."""
    writer = SpoolWriter(session_dir, segment_bytes=1 << 20, max_segments=4)
    writer.append(spool.STDOUT, b"good\n", 1.0)
    second = writer.size
    writer.append(spool.STDOUT, b"will be damaged\n", 2.0)
    writer.close()
    path = spool.segment_path(session_dir, 0)
    content = bytearray(path.read_bytes())
    content[second + 9] ^= 0x01  # the length field of the second record
    path.write_bytes(bytes(content))

    reader = SpoolReader(session_dir, Position(0, 0))
    try:
        with pytest.raises(spool.CorruptSpool, match="checksum"):
            reader.read(1 << 20)
    finally:
        reader.close()


def test_a_zeroed_region_raises_corrupt_spool(session_dir: Path) -> None:
    """Zeros where a record should start (a file extended by a crash) are corruption, not a record."""
    spool.segment_path(session_dir, 0).write_bytes(bytes(64))
    reader = SpoolReader(session_dir, Position(0, 0))
    try:
        with pytest.raises(spool.CorruptSpool):
            reader.read(1 << 20)
    finally:
        reader.close()


@pytest.mark.parametrize(
    "header",
    [
        spool.header(0, 1.0, 4),  # kind 0 is no record kind
        spool.header(99, 1.0, 4),
        spool.header(spool.STDOUT, 1.0, spool.MAX_PAYLOAD + 1),  # longer than any record
    ],
    ids=["kind-zero", "unknown-kind", "oversized-length"],
)
def test_impossible_header_raises_corrupt_spool(session_dir: Path, header: bytes) -> None:
    """A header with an unknown kind or an impossible length is reported as corruption, not awaited as a partial record."""
    spool.segment_path(session_dir, 0).write_bytes(header + b"data")
    reader = SpoolReader(session_dir, Position(0, 0))
    try:
        with pytest.raises(spool.CorruptSpool, match="bad record header"):
            reader.read(1 << 20)
    finally:
        reader.close()


def test_writer_reopened_on_an_existing_spool_appends_after_its_records(session_dir: Path) -> None:
    """A writer opened on a spool that has records appends to its last segment, after what is there."""
    writer = SpoolWriter(session_dir, segment_bytes=1 << 20, max_segments=4)
    writer.append(spool.STDOUT, b"one\n", 1.0)
    writer.close()
    writer = SpoolWriter(session_dir, segment_bytes=1 << 20, max_segments=4)
    writer.append(spool.STDOUT, b"two\n", 2.0)
    writer.close()

    reader = SpoolReader(session_dir, Position(0, 0))
    try:
        assert without_rotations(read_all(reader)) == [
            Record(spool.STDOUT, 1.0, b"one\n"),
            Record(spool.STDOUT, 2.0, b"two\n"),
        ]
    finally:
        reader.close()


def test_rotation_blocks_while_max_segments_are_unread_and_resumes_after_deletion(session_dir: Path) -> None:
    """With max_segments=2 and nothing deleted the writer blocks at rotation; deleting ingested segments lets it continue to the end."""
    segment_bytes = 200
    to_write = [Record(spool.STDOUT, 5000.0 + i, b"%05d " % i + b"x" * 40 + b"\n") for i in range(40)]
    appended = 0
    failure: list[BaseException] = []

    def produce() -> None:
        nonlocal appended
        try:
            writer = SpoolWriter(session_dir, segment_bytes=segment_bytes, max_segments=2)
            for record in to_write:
                writer.append(record.kind, record.data, record.timestamp)
                appended += 1
            writer.append_event(spool.EXIT, {"exit_code": 0})
            writer.close()
        except BaseException as error:  # reported by the test thread
            failure.append(error)

    thread = threading.Thread(target=produce, name="spool-writer", daemon=True)
    reader = SpoolReader(session_dir, Position(0, 0))
    items: list[tuple[Record, Position]] = []
    thread.start()
    try:
        # The writer fills segment 0, rotates to 1, fills it and must then wait: two segments
        # exist and neither has been deleted. Its last act before waiting is a ROTATE record.
        def writer_waiting_at_second_rotation() -> bool:
            items.extend(reader.read(1 << 20))
            return sum(record.kind == spool.ROTATE for record, _ in items) >= 2

        wait_for(writer_waiting_at_second_rotation, what="the writer to reach its second rotation")
        blocked_at = appended
        assert 0 < blocked_at < len(to_write)

        # It stays blocked: no third segment, no more records, for a while.
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            assert spool.list_segments(session_dir) == [0, 1]
            assert appended == blocked_at and thread.is_alive()
            time.sleep(0.03)

        # Ingest catches up: delete what the reader has consumed, and the writer carries on.
        def drained() -> bool:
            items.extend(reader.read(1 << 20))
            spool.delete_segments_before(session_dir, reader.position.segment)
            return not thread.is_alive() and not reader.read(1 << 20)

        wait_for(drained, what="the writer to finish once segments are deleted")
        assert not failure, failure
        assert appended == len(to_write)
        assert len(spool.list_segments(session_dir)) <= 2
    finally:
        # Never leave the writer thread blocked behind a failed assertion.
        end = time.monotonic() + DEADLINE
        while thread.is_alive() and time.monotonic() < end:
            items.extend(reader.read(1 << 20))
            spool.delete_segments_before(session_dir, reader.position.segment)
            thread.join(0.03)
        reader.close()

    records = without_rotations(items)
    assert records[:-1] == to_write
    assert records[-1].kind == spool.EXIT


@SMALL_DISK
def test_a_record_cut_short_by_a_full_disk_is_finished_once_space_returns(tmp_path: Path) -> None:
    """A writer that runs out of disk in the middle of a record waits, says so, and finishes that very record once space returns."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(disk)], check=True)
    thread: threading.Thread | None = None
    filler = disk / "filler"
    try:
        session_dir = disk / "session"
        session_dir.mkdir()
        fill_disk(filler)
        os.truncate(filler, filler.stat().st_size - 128 * 1024)  # room for half the record
        blocked: list[bool] = []
        writer = SpoolWriter(session_dir, segment_bytes=1 << 20, max_segments=4, on_blocked=blocked.append)
        payload = bytes(range(256)) * 1024
        thread = threading.Thread(target=writer.append, args=(spool.STDOUT, payload, 1.0), daemon=True)
        thread.start()
        wait_for(lambda: blocked == [True], what="the writer to say it waits for space")
        segment = spool.segment_path(session_dir, 0)
        assert 0 < segment.stat().st_size < spool.HEADER.size + len(payload)
        assert thread.is_alive()

        filler.unlink()
        thread.join(DEADLINE)
        assert not thread.is_alive() and blocked == [True, False]
        writer.append(spool.STDOUT, b"after\n", 2.0)
        writer.close()
        content = segment.read_bytes()
        records, end = spool.decode(content)
        assert records == [Record(spool.STDOUT, 1.0, payload), Record(spool.STDOUT, 2.0, b"after\n")]
        assert end == len(content)
    finally:
        filler.unlink(missing_ok=True)  # a writer still waiting gets its room and ends
        if thread is not None:
            thread.join(DEADLINE)
        subprocess.run(["umount", "-l", str(disk)], check=False)
