"""Ingest: spool records to batched transactions, exactly once, with real SQLite files, spools and shims."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from supervisor import spool
from supervisor.commands import Commands
from supervisor.config import Config
from supervisor.database import DatabaseWriter, ReaderPool
from supervisor.ingest import Ingestor
from supervisor.model import utc_now
from supervisor.protocol import decode_data, parse_request
from supervisor.slots import SlotManager
from supervisor.spool import Position, Record, SpoolReader, SpoolWriter
from supervisor.store import ROW_OVERHEAD, Batch, Reader, Row, Session, Store
from supervisor.tailing import tail_spool
from tests.harness import wait_for
from tests.helpers import end_shim_run, new_session

DEADLINE = 20.0
POLL = 0.02
REPO = Path(__file__).resolve().parents[1]
STREAM_OF = {spool.STDOUT: "stdout", spool.STDERR: "stderr", spool.STDIN: "stdin"}


class RecordingStore(Store):
    """The real Store, noting what each commit_batch call (one transaction) carried."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[Batch] = []
        self.commits = 0
        # SQLite's own count of committed transactions on the writer connection.
        self.db.set_commit_hook(self._on_commit)

    def _on_commit(self) -> bool:
        self.commits += 1
        return False  # let it commit

    def commit_batch(self, batch: Batch) -> None:
        super().commit_batch(batch)
        self.batches.append(batch)


def rows_of(db_path: Path, session_id: str) -> list[Row]:
    """Every committed row of a session, read on a connection of its own."""
    reader = Reader(db_path)
    try:
        return list(reader.iter_transcript(session_id))
    finally:
        reader.close()


def row_count(db_path: Path, session_id: str) -> int:
    reader = Reader(db_path)
    try:
        return reader.transcript_stats(session_id)["rows"]
    finally:
        reader.close()


def committed_session(db_path: Path, session_id: str) -> Session:
    reader = Reader(db_path)
    try:
        session = reader.get_session(session_id)
    finally:
        reader.close()
    assert session is not None
    return session


def assert_gapless(rows: list[Row], first: int = 1) -> None:
    assert [row.seq for row in rows] == list(range(first, first + len(rows)))


async def poll_until(condition: Callable[[], Any], what: str) -> Any:
    """Check condition every POLL seconds until it is true; fail after DEADLINE."""
    with trio.fail_after(DEADLINE):
        while not (value := condition()):
            await trio.sleep(POLL)
    return value


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "slotd.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[RecordingStore]:
    store = RecordingStore(db_path)
    yield store
    store.close()


@pytest.fixture
async def open_ingestor(store: RecordingStore) -> AsyncIterator[Callable[..., Any]]:
    """Start an Ingestor (with its flush loop unless run=False) on a real DatabaseWriter."""
    writers: list[DatabaseWriter] = []
    async with trio.open_nursery() as nursery:

        async def start(flush_interval: float = 60.0, batch_max_bytes: int = 1 << 20, run: bool = True) -> Ingestor:
            writer = DatabaseWriter(store)
            writers.append(writer)
            ingestor = Ingestor(writer, flush_interval, batch_max_bytes)
            if run:
                await nursery.start(ingestor.run)
            return ingestor

        yield start
        nursery.cancel_scope.cancel()
    # Only now: the flush loops' last flushes (on cancellation) still need their writer.
    for writer in writers:
        writer.close()


class WriterStall:
    """Holds the database writer thread busy until released: a slow disk, for the test's purpose."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> None:
        self.entered.set()
        self.release.wait(DEADLINE)


# -- Ingestor ---------------------------------------------------------------------------


async def test_rows_are_numbered_consecutively_per_session_after_the_registered_last_seq(
    store: RecordingStore, db_path: Path, open_ingestor
) -> None:
    """Rows get consecutive sequence numbers per session, starting right after the last_seq it was registered with."""
    old, fresh = new_session(store, slot=1), new_session(store, slot=2)
    earlier = Batch()
    for seq in range(1, 42):
        earlier.add_row(Row(old, seq, 1.0, "stdout", b"before restart %d\n" % seq))
    store.commit_batch(earlier)

    ingestor = await open_ingestor()
    ingestor.register(old, store.last_seq(old))
    ingestor.register(fresh, store.last_seq(fresh))
    ingestor.register(old, 0)  # registering again keeps the numbering already under way
    seqs = [
        ingestor.append(old, "stdout", b"a\n"),
        ingestor.append(fresh, "stderr", b"b\n"),
        ingestor.append(old, "stdin", b"c\n"),
        ingestor.append(fresh, "system", b"d\n"),
        ingestor.append(old, "stdout", b"\x00\xff\n"),
    ]
    assert seqs == [42, 1, 43, 2, 44]
    await ingestor.commit_now()

    old_rows = rows_of(db_path, old)
    assert_gapless(old_rows)
    assert [(r.seq, r.stream, r.data) for r in old_rows[41:]] == [
        (42, "stdout", b"a\n"),
        (43, "stdin", b"c\n"),
        (44, "stdout", b"\x00\xff\n"),
    ]
    assert [(r.seq, r.stream, r.data) for r in rows_of(db_path, fresh)] == [
        (1, "stderr", b"b\n"),
        (2, "system", b"d\n"),
    ]


async def test_nothing_appended_is_in_the_database_before_a_flush(
    store: RecordingStore, db_path: Path, open_ingestor
) -> None:
    """Appended rows stay out of the database until a flush commits them."""
    session_id = new_session(store)
    commits_before = store.commits
    ingestor = await open_ingestor(flush_interval=60.0)
    ingestor.register(session_id, 0)
    for index in range(10):
        ingestor.append(session_id, "stdout", b"line %d\n" % index)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert rows_of(db_path, session_id) == []
    assert ingestor.rows_committed == 0
    assert store.commits == commits_before

    await ingestor.commit_now()
    assert len(rows_of(db_path, session_id)) == 10
    assert ingestor.rows_committed == 10


async def test_appended_rows_are_committed_after_flush_interval_without_being_asked(
    store: RecordingStore, db_path: Path, open_ingestor
) -> None:
    """Rows appended with nobody waiting are committed once flush_interval has passed."""
    session_id = new_session(store)
    ingestor = await open_ingestor(flush_interval=0.05)
    ingestor.register(session_id, 0)
    appended_at = time.monotonic()
    ingestor.append(session_id, "stdout", b"prompt> ")
    await poll_until(lambda: rows_of(db_path, session_id), "the row to be committed")
    assert time.monotonic() - appended_at >= 0.05 - 0.005
    assert [r.data for r in rows_of(db_path, session_id)] == [b"prompt> "]


async def test_commit_now_returns_only_once_everything_appended_before_it_is_committed(
    store: RecordingStore, db_path: Path, open_ingestor, nursery
) -> None:
    """commit_now() returns only after the rows appended before it are committed, even with an earlier flush in flight."""
    session_id = new_session(store)
    ingestor = await open_ingestor(flush_interval=60.0)
    ingestor.register(session_id, 0)

    ingestor.append(session_id, "stdout", b"alone\n")
    await ingestor.commit_now()
    assert [r.data for r in rows_of(db_path, session_id)] == [b"alone\n"]

    # Stall the writer so the next flush stays in flight while more rows arrive.
    stall = WriterStall()
    nursery.start_soon(ingestor.writer.run, stall)
    await poll_until(stall.entered.is_set, "the writer to stall")
    first_done = trio.Event()
    second_done = trio.Event()

    async def commit(done: trio.Event) -> None:
        await ingestor.commit_now()
        done.set()

    ingestor.append(session_id, "stdout", b"first\n")
    nursery.start_soon(commit, first_done)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # the flush of "first" is now queued behind the stall
    ingestor.append(session_id, "stdout", b"second\n")
    nursery.start_soon(commit, second_done)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert not first_done.is_set() and not second_done.is_set()
    assert len(rows_of(db_path, session_id)) == 1

    stall.release.set()
    with trio.fail_after(DEADLINE):
        await first_done.wait()
    assert [r.data for r in rows_of(db_path, session_id)][:2] == [b"alone\n", b"first\n"]
    with trio.fail_after(DEADLINE):
        await second_done.wait()
    assert [r.data for r in rows_of(db_path, session_id)] == [b"alone\n", b"first\n", b"second\n"]


async def test_many_appends_within_one_flush_interval_are_committed_in_one_transaction(
    store: RecordingStore, db_path: Path, open_ingestor
) -> None:
    """A thousand rows appended within one flush_interval, across several scheduling points, commit in one transaction."""
    session_id = new_session(store)
    ingestor = await open_ingestor(flush_interval=1.0)
    ingestor.register(session_id, 0)
    commits_before = store.commits
    started = time.monotonic()
    for group in range(10):
        for index in range(100):
            ingestor.append(session_id, "stdout", b"group %d line %d\n" % (group, index))
        await trio.lowlevel.checkpoint()
    assert time.monotonic() - started < 0.5  # the test's premise: all within one interval
    counts = []
    await poll_until(lambda: counts.append(row_count(db_path, session_id)) or counts[-1], "the rows to appear")
    assert counts[-1] == 1000  # all at once: never a part of them
    assert store.commits - commits_before == 1
    assert [len(batch.rows) for batch in store.batches] == [1000]

    ingestor.append(session_id, "stdout", b"later\n")
    await ingestor.commit_now()
    assert [len(batch.rows) for batch in store.batches] == [1000, 1]
    assert_gapless(rows_of(db_path, session_id))


async def test_a_session_holding_its_share_of_the_batch_waits_for_a_flush_and_others_do_not(
    store: RecordingStore, db_path: Path, open_ingestor, nursery
) -> None:
    """A session holding half of batch_max_bytes in the open batch waits in wait_for_room() until a flush; a quiet session does not wait."""
    busy, quiet = new_session(store, slot=1), new_session(store, slot=2)
    # A share of two 40-byte rows (each costs its data and ROW_OVERHEAD).
    ingestor = await open_ingestor(batch_max_bytes=4 * (40 + ROW_OVERHEAD), run=False)
    ingestor.register(busy, 0)
    ingestor.register(quiet, 0)
    ingestor.append(busy, "stdout", b"x" * 40)
    with trio.fail_after(DEADLINE):
        await ingestor.wait_for_room(busy)  # under its share: returns at once

    ingestor.append(busy, "stdout", b"y" * 40)
    room = trio.Event()

    async def wait_for_room() -> None:
        await ingestor.wait_for_room(busy)
        room.set()

    nursery.start_soon(wait_for_room)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert not room.is_set()
    with trio.fail_after(DEADLINE):
        await ingestor.wait_for_room(quiet)  # the busy one's share is not the quiet one's

    assert await ingestor.flush()
    with trio.fail_after(DEADLINE):
        await room.wait()
    assert [r.data for r in rows_of(db_path, busy)] == [b"x" * 40, b"y" * 40]


async def stalled_ingestor(
    store: RecordingStore, open_ingestor, nursery: trio.Nursery, batch_max: int
) -> tuple[Ingestor, str, WriterStall]:
    """An Ingestor flushing every 20 ms for one registered session, its writer stalled."""
    session_id = new_session(store)
    ingestor = await open_ingestor(flush_interval=0.02, batch_max_bytes=batch_max)
    ingestor.register(session_id, 0)
    stall = WriterStall()
    nursery.start_soon(ingestor.writer.run, stall)
    await poll_until(stall.entered.is_set, "the writer to stall")
    return ingestor, session_id, stall


async def test_a_producer_waiting_for_room_holds_at_most_two_batches_while_the_writer_is_stalled(
    store: RecordingStore, db_path: Path, open_ingestor, nursery
) -> None:
    """While a commit is stalled, a producer that waits for room stops after filling its share of one more batch, and resumes after the commit."""
    batch_max = 10 * (100 + ROW_OVERHEAD)  # shares of five 100-byte rows
    ingestor, session_id, stall = await stalled_ingestor(store, open_ingestor, nursery, batch_max)

    produced = 0
    done = trio.Event()

    async def produce() -> None:
        nonlocal produced
        for index in range(200):
            await ingestor.wait_for_room(session_id)
            ingestor.append(session_id, "stdout", b"%04d" % index + b"." * 95 + b"\n")
            produced += 1
        done.set()

    nursery.start_soon(produce)
    await trio.testing.wait_all_tasks_blocked(cushion=0.1)
    # One share taken by the stalled flush, one more filled: five rows each.
    assert produced == 10
    assert not done.is_set()

    stall.release.set()
    with trio.fail_after(DEADLINE):
        await done.wait()
    await ingestor.commit_now()
    rows = rows_of(db_path, session_id)
    assert_gapless(rows)
    assert [int(r.data[:4]) for r in rows] == list(range(200))
    assert all(batch.cost <= batch_max for batch in store.batches)


async def test_tiny_rows_count_their_per_row_cost_against_the_batch_cap(
    store: RecordingStore, db_path: Path, open_ingestor, nursery
) -> None:
    """While a commit is stalled, a producer of 8-byte rows stops once its rows' memory (data plus per-row cost), not their data alone, fills its share of one more batch."""
    batch_max = 64 * 1024
    ingestor, session_id, stall = await stalled_ingestor(store, open_ingestor, nursery, batch_max)

    produced = 0

    async def produce() -> None:
        nonlocal produced
        for index in range(100_000):
            await ingestor.wait_for_room(session_id)
            ingestor.append(session_id, "stdout", b"%07d\n" % index)
            produced += 1

    nursery.start_soon(produce)
    await trio.testing.wait_all_tasks_blocked(cushion=0.1)
    # Two shares (the stalled flush's and the open batch's) of 8-byte rows that cost
    # ROW_OVERHEAD each: counted by data alone, it would be 2 * 32 KiB / 8 = 8,192 rows.
    assert produced * (8 + ROW_OVERHEAD) <= batch_max + 2 * (8 + ROW_OVERHEAD)
    stall.release.set()


async def test_positions_and_updates_are_committed_in_the_same_transaction_as_the_rows(
    store: RecordingStore, db_path: Path, open_ingestor, tmp_path: Path
) -> None:
    """Rows, the spool position reached and session updates appear together, in one transaction, or not at all."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    session_id = new_session(store, spool_dir=spool_dir)
    ingestor = await open_ingestor()
    ingestor.register(session_id, 0)
    ingestor.append(session_id, "stdout", b"out\n")
    ingestor.set_position(session_id, Position(0, 500), spool_dir)
    ingestor.append(session_id, "system", b"exit code 0\n")
    ingestor.set_position(session_id, Position(2, 1234), spool_dir)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    before = committed_session(db_path, session_id)
    assert (before.status, before.spool_segment, before.spool_offset) == ("running", 0, 0)
    ended_at = utc_now()
    commits_before = store.commits
    # A status change is committed at once (no flush_interval wait): with all the rest.
    ingestor.update(session_id, status="completed", slot=None, exit_code=0, ended_at=ended_at)
    await ingestor.commit_now()
    after = committed_session(db_path, session_id)
    assert [r.data for r in rows_of(db_path, session_id)] == [b"out\n", b"exit code 0\n"]
    assert (after.spool_segment, after.spool_offset) == (2, 1234)
    assert (after.status, after.slot, after.exit_code, after.ended_at) == ("completed", None, 0, ended_at)
    assert after.transcript_bytes == len(b"out\n") + len(b"exit code 0\n")
    assert store.commits - commits_before == 1
    [batch] = store.batches
    assert len(batch.rows) == 2 and batch.positions and batch.updates


async def test_spool_segments_are_deleted_once_a_later_position_is_committed(
    store: RecordingStore, open_ingestor, tmp_path: Path
) -> None:
    """Segments below the position reached are deleted after the commit that stores it, not before."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    for number in range(4):
        spool.segment_path(spool_dir, number).write_bytes(b"")
    session_id = new_session(store, spool_dir=spool_dir)
    ingestor = await open_ingestor()
    ingestor.register(session_id, 0)
    ingestor.set_position(session_id, Position(2, 10), spool_dir)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert spool.list_segments(spool_dir) == [0, 1, 2, 3]
    await ingestor.commit_now()
    assert spool.list_segments(spool_dir) == [2, 3]


# -- what followers get before the commit -------------------------------------------------


async def ingestor_of_a_new_session(store: Store, open_ingestor, **settings: Any) -> tuple[Ingestor, str]:
    session_id = new_session(store)
    ingestor = await open_ingestor(**settings)
    ingestor.register(session_id, 0)
    return ingestor, session_id


def numbered(db_path: Path, session_id: str) -> list[tuple[int, bytes]]:
    return [(row.seq, row.data) for row in rows_of(db_path, session_id)]


def read_ahead(ingestor: Ingestor, session_id: str, after: int, streams: list[str] | None = None, max_rows: int = 500):
    """(seqs, through) of what a follower at `after` may be sent before the commit, or None."""
    ahead = ingestor.live_feed.read_ahead(session_id, after, streams, max_rows, 1 << 20)
    return None if ahead is None else ([row.seq for row in ahead.rows], ahead.through)


async def test_rows_read_from_a_spool_are_followed_before_their_commit_but_none_past_a_daemon_row(
    store: RecordingStore, db_path: Path, open_ingestor
) -> None:
    """Rows read from a spool can be sent to followers at once; a row the daemon writes itself holds back itself and every row after it until they are committed."""
    ingestor, session_id = await ingestor_of_a_new_session(store, open_ingestor)
    ingestor.append_read(session_id, "stdout", b"a\n", 1.0)
    ingestor.append_read(session_id, "stderr", b"b\n", 2.0)
    assert read_ahead(ingestor, session_id, 0) == ([1, 2], 2)
    assert read_ahead(ingestor, session_id, 0, max_rows=1) == ([1], 1)
    assert read_ahead(ingestor, session_id, 0, streams=["stderr"]) == ([2], 2)
    ingestor.append(session_id, "system", b"paused\n")
    ingestor.append_read(session_id, "stdout", b"c\n", 3.0)
    assert read_ahead(ingestor, session_id, 2) == ([], 2)
    assert rows_of(db_path, session_id) == []

    await ingestor.commit_now()
    assert numbered(db_path, session_id) == [
        (1, b"a\n"),
        (2, b"b\n"),
        (3, b"paused\n"),
        (4, b"c\n"),
    ]
    assert read_ahead(ingestor, session_id, 2) is None  # committed: the database has them
    ingestor.append_read(session_id, "stdout", b"d\n", 4.0)
    assert read_ahead(ingestor, session_id, 4) == ([5], 5)


class CountingReaders(ReaderPool):
    """The daemon's reader pool, counting the database reads run on it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads = 0

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.reads += 1
        return await super().run(fn, *args)


async def test_a_follower_reads_the_database_again_only_when_its_session_changes(
    store: RecordingStore, db_path: Path, tmp_path: Path, open_ingestor
) -> None:
    """A follower that has every committed row reads the database again when its session's record changes, not at commits of other sessions or of its own rows."""
    ingestor, followed = await ingestor_of_a_new_session(store, open_ingestor, flush_interval=60.0)
    other = new_session(store, slot=2)
    ingestor.register(other, 0)
    config = Config(source=None, state_dir=tmp_path, runtime_dir=tmp_path, socket=tmp_path / "slotd.sock")
    readers = CountingReaders(db_path)
    commands = Commands(
        config, SlotManager(config, ingestor.writer, ingestor), readers, ingestor.writer, ingestor, lambda mode: None
    )
    sent: list[bytes] = []

    async def emit(*messages: dict[str, Any]) -> None:
        sent.extend(decode_data(message["row"]) for message in messages)

    _id, request = parse_request({"cmd": "follow", "session": followed})
    async with trio.open_nursery() as nursery:
        result: list[Any] = []

        async def follow() -> None:
            result.append(await commands.handle(request, emit))

        nursery.start_soon(follow)
        ingestor.append_read(followed, "stdout", b"first\n", 1.0)
        await poll_until(lambda: sent == [b"first\n"], "the first row sent")
        await ingestor.commit_now()
        await poll_until(lambda: readers.reads, "the follower's first read")
        await trio.testing.wait_all_tasks_blocked()
        reads = readers.reads
        for number in range(20):
            ingestor.append_read(other, "stdout", b"%d\n" % number, 2.0)
            ingestor.append_read(followed, "stdout", b"%d\n" % number, 2.0)
            # Sent before it is committed (a row committed before its follower got to it
            # is read from the database, as it must be).
            await poll_until(lambda number=number: sent[-1] == b"%d\n" % number, "the row sent")
            await ingestor.commit_now()
            await trio.testing.wait_all_tasks_blocked()
        assert sent == [b"first\n", *(b"%d\n" % number for number in range(20))]
        assert readers.reads == reads
        ingestor.update(followed, status="completed", slot=None, ended_at=utc_now(), exit_code=0)
        await ingestor.commit_now()
        with trio.fail_after(DEADLINE):
            while not result:
                await trio.sleep(POLL)
    assert result[0]["status"] == "completed"
    assert result[0]["last_seq"] == 21
    readers.close()


async def test_rows_the_daemon_writes_during_a_replay_are_numbered_after_it(
    store: RecordingStore, db_path: Path, open_ingestor
) -> None:
    """While a spool is read again after a restart, a row the daemon writes takes no number until the replay is done, so the rows read again keep theirs."""
    ingestor, session_id = await ingestor_of_a_new_session(store, open_ingestor)
    ingestor.replay(session_id)
    assert ingestor.append(session_id, "system", b"re-attached\n") is None
    assert ingestor.append_read(session_id, "stdout", b"a\n", 1.0) == 1
    assert ingestor.append_read(session_id, "stdout", b"b\n", 2.0) == 2
    ingestor.replayed(session_id)
    assert ingestor.append_read(session_id, "stdout", b"c\n", 3.0) == 4
    await ingestor.commit_now()
    assert numbered(db_path, session_id) == [
        (1, b"a\n"),
        (2, b"b\n"),
        (3, b"re-attached\n"),
        (4, b"c\n"),
    ]


async def test_a_replayed_spool_numbers_a_daemon_row_after_every_record_there_when_the_tail_began(
    store: RecordingStore, db_path: Path, spool_dir: Path, open_ingestor, nursery: trio.Nursery
) -> None:
    """A note written while a live session's spool is replayed is numbered after every record the spool held when its tail began, and before the records written later."""
    writer = SpoolWriter(spool_dir, segment_bytes=1 << 20, max_segments=4)
    for index in range(3):
        writer.append(spool.STDOUT, b"before %d\n" % index)
    session_id = new_session(store, spool_dir=spool_dir)
    ingestor = await open_ingestor(flush_interval=0.01)
    ingestor.register(session_id, 0)
    ingestor.replay(session_id)
    ingestor.append(session_id, "system", b"re-attached\n")
    shim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ended = trio.Event()

    async def tail() -> None:
        await tail_spool(session_id, spool_dir, Position(0, 0), shim.pid, ingestor, lambda *_: None, lambda _: None)
        ended.set()

    try:
        nursery.start_soon(tail)
        await poll_until(lambda: row_count(db_path, session_id) == 4, "the rows read again and the note")
        writer.append(spool.STDOUT, b"after\n")
        writer.append_event(spool.EXIT, {"exit_code": 0, "signal": None, "ended_at": time.time()})
        writer.close()
        with trio.fail_after(DEADLINE):
            await ended.wait()
        await ingestor.commit_now()
    finally:
        shim.kill()
        shim.wait()
    assert numbered(db_path, session_id) == [
        (1, b"before 0\n"),
        (2, b"before 1\n"),
        (3, b"before 2\n"),
        (4, b"re-attached\n"),
        (5, b"after\n"),
    ]


# -- one daemon's ingest of one session: what slots.py does, reduced to the ingest path ---


def record_event(ingestor: Ingestor, session_id: str, spool_dir: Path, record: Record, end: Position) -> None:
    """A START or EXIT becomes a system row; its position is stored with it (as slots.py does)."""
    payload = json.loads(record.data)
    if record.kind == spool.START:
        ingestor.append(session_id, "system", b"started\n", record.timestamp)
    elif record.kind == spool.EXIT:
        ingestor.append(
            session_id, "system", b"exit %r %r\n" % (payload["exit_code"], payload["signal"]), record.timestamp
        )
    ingestor.set_position(session_id, end, spool_dir)


async def ingest_session(
    store: Store,
    spool_dir: Path,
    session_id: str,
    shim_pid: int | None,
    *,
    flush_interval: float = 0.01,
    batch_max_bytes: int = 1 << 20,
    stop_after_rows: int | None = None,
) -> tuple[bool, Record | None]:
    """One daemon incarnation: resume the session's spool at the committed position until tail_spool returns.

    With stop_after_rows, stop (as on SIGTERM: what was read is committed) once that many
    rows are committed. Returns whether tail_spool returned, and what it returned.
    """
    writer = DatabaseWriter(store)
    ingestor = Ingestor(writer, flush_interval, batch_max_bytes)
    session = store.get_session(session_id)
    assert session is not None
    ingestor.register(session_id, store.last_seq(session_id))
    position = Position(session.spool_segment, session.spool_offset)
    returned: list[Record | None] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(ingestor.run)

            if stop_after_rows is not None:

                async def stop_later() -> None:
                    while ingestor.rows_committed < stop_after_rows:
                        await ingestor.wait_committed()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stop_later)
            final = await tail_spool(
                session_id,
                spool_dir,
                position,
                shim_pid,
                ingestor,
                on_event=lambda record, end: record_event(ingestor, session_id, spool_dir, record, end),
                on_output=lambda data: None,
            )
            await ingestor.commit_now()
            returned.append(final)
            nursery.cancel_scope.cancel()
    finally:
        writer.close()
    return (bool(returned), returned[0] if returned else None)


def expected_rows(records: list[Record]) -> list[tuple[str, bytes]]:
    """The transcript rows a spool's records must give, events as record_event writes them."""
    out = []
    for record in records:
        if record.kind in STREAM_OF:
            out.append((STREAM_OF[record.kind], record.data))
        elif record.kind == spool.START:
            out.append(("system", b"started\n"))
        elif record.kind == spool.EXIT:
            payload = json.loads(record.data)
            out.append(("system", b"exit %r %r\n" % (payload["exit_code"], payload["signal"])))
    return out


def spool_records(spool_dir: Path) -> list[Record]:
    """Every record in a spool whose segments are all still there, ROTATE left out."""
    reader = SpoolReader(spool_dir, Position(0, 0))
    records = []
    try:
        while items := reader.read(1 << 20):
            records.extend(record for record, _ in items if record.kind != spool.ROTATE)
    finally:
        reader.close()
    return records


def random_output(rng: random.Random, index: int) -> tuple[int, bytes]:
    kind = rng.choice([spool.STDOUT, spool.STDOUT, spool.STDOUT, spool.STDERR, spool.STDIN])
    data = b"%06d " % index + rng.randbytes(rng.randrange(0, 200)) + rng.choice([b"\n", b"", b"\x00\n"])
    return kind, data


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


# -- tail_spool on spools written by the test -----------------------------------------


async def test_tail_spool_ingests_every_record_once_in_order_and_returns_the_exit_record(
    store: RecordingStore, db_path: Path, spool_dir: Path
) -> None:
    """Every output record of a finished spool, across segments, is stored once in order, and EXIT is returned."""
    rng = random.Random(5)
    writer = SpoolWriter(spool_dir, segment_bytes=2048, max_segments=10_000)
    writer.append_event(spool.START, {"pid": 1, "shim_pid": 2, "started_at": time.time()})
    written = [random_output(rng, index) for index in range(300)]
    for kind, data in written:
        writer.append(kind, data)
    writer.append_event(spool.EXIT, {"exit_code": 0, "signal": None, "ended_at": time.time()})
    writer.close()
    records = spool_records(spool_dir)
    last_segment = spool.list_segments(spool_dir)[-1]
    assert last_segment > 5
    session_id = new_session(store, spool_dir=spool_dir)

    returned, final = await ingest_session(store, spool_dir, session_id, shim_pid=None)

    assert returned and final is not None and final.kind == spool.EXIT
    rows = rows_of(db_path, session_id)
    assert_gapless(rows)
    assert [(r.stream, r.data) for r in rows] == expected_rows(records)
    assert [(r.stream, r.data) for r in rows[1:-1]] == [(STREAM_OF[k], d) for k, d in written]
    assert [r.ts for r in rows] == [record.timestamp for record in records if record.kind != spool.ROTATE]
    session = committed_session(db_path, session_id)
    assert (session.spool_segment, session.spool_offset) == (
        last_segment,
        spool.segment_path(spool_dir, last_segment).stat().st_size,
    )
    assert spool.list_segments(spool_dir) == [last_segment]


async def test_tail_spool_without_a_shim_stops_at_the_last_complete_record_and_returns_none(
    store: RecordingStore, db_path: Path, spool_dir: Path
) -> None:
    """With no shim and no EXIT, tail_spool stores every complete record, stops before a torn one, and returns None."""
    writer = SpoolWriter(spool_dir, segment_bytes=1 << 20, max_segments=4)
    writer.append_event(spool.START, {"pid": 1, "shim_pid": 2, "started_at": time.time()})
    writer.append(spool.STDOUT, b"one\n")
    writer.append(spool.STDERR, b"two\n")
    complete_size = writer.size
    torn = spool.encode(spool.STDOUT, b"three, torn by a crash\n")
    os.write(writer.fd, torn[: spool.HEADER.size + 4])
    session_id = new_session(store, spool_dir=spool_dir)

    returned, final = await ingest_session(store, spool_dir, session_id, shim_pid=None)
    assert returned and final is None
    assert [(r.seq, r.stream, r.data) for r in rows_of(db_path, session_id)] == [
        (1, "system", b"started\n"),
        (2, "stdout", b"one\n"),
        (3, "stderr", b"two\n"),
    ]
    session = committed_session(db_path, session_id)
    assert (session.spool_segment, session.spool_offset) == (0, complete_size)

    # The rest of the record arrives; the next incarnation takes it from there.
    os.write(writer.fd, torn[spool.HEADER.size + 4 :])
    writer.size += len(torn)
    writer.append_event(spool.EXIT, {"exit_code": 1, "signal": None, "ended_at": time.time()})
    writer.close()
    returned, final = await ingest_session(store, spool_dir, session_id, shim_pid=None)
    assert returned and final is not None and final.kind == spool.EXIT
    assert [(r.seq, r.stream, r.data) for r in rows_of(db_path, session_id)][3:] == [
        (4, "stdout", b"three, torn by a crash\n"),
        (5, "system", b"exit 1 None\n"),
    ]


async def test_restarting_at_every_committed_position_ingests_each_record_exactly_once(
    store: RecordingStore, db_path: Path, spool_dir: Path
) -> None:
    """A daemon restarted after every record written, and halfway through records, stores each record once, without a gap."""
    rng = random.Random(11)
    writer = SpoolWriter(spool_dir, segment_bytes=1024, max_segments=10_000)
    session_id = new_session(store, spool_dir=spool_dir)
    positions: list[Position] = []
    incarnations = 0

    async def restart() -> Record | None:
        nonlocal incarnations
        incarnations += 1
        returned, final = await ingest_session(store, spool_dir, session_id, shim_pid=None)
        assert returned
        session = committed_session(db_path, session_id)
        positions.append(Position(session.spool_segment, session.spool_offset))
        assert positions == sorted(positions)  # the committed position never moves back
        return final

    writer.append_event(spool.START, {"pid": 1, "shim_pid": 2, "started_at": time.time()})
    assert await restart() is None
    written: list[tuple[int, bytes]] = [(spool.START, b"")]
    for index in range(150):
        kind, data = random_output(rng, index)
        if index % 7 == 3:
            # Only part of the record is on disk when the daemon comes back.
            blob = spool.encode(kind, data)
            cut = rng.randrange(1, len(blob))
            os.write(writer.fd, blob[:cut])
            assert await restart() is None
            os.write(writer.fd, blob[cut:])
            writer.size += len(blob)
        else:
            writer.append(kind, data)
        written.append((kind, data))
        assert await restart() is None
        rows = rows_of(db_path, session_id)
        assert_gapless(rows)
        assert len(rows) == len(written)
    writer.append_event(spool.EXIT, {"exit_code": 0, "signal": None, "ended_at": time.time()})
    writer.close()
    final = await restart()
    assert final is not None and final.kind == spool.EXIT
    assert await restart() is None  # after the end: nothing more, nothing twice

    rows = rows_of(db_path, session_id)
    assert_gapless(rows)
    assert [(r.stream, r.data) for r in rows] == [("system", b"started\n")] + [
        (STREAM_OF[kind], data) for kind, data in written[1:]
    ] + [("system", b"exit 0 None\n")]
    assert len(set(positions)) >= 150
    assert positions[-1].segment > 10
    assert spool.list_segments(spool_dir) == [positions[-1].segment]


# A daemon incarnation in a process of its own, SIGKILLed by its writer thread in the
# middle of its Nth commit, or by the test, whenever it likes.
CHILD_DAEMON = """
import sys
from tests.test_ingest import child_daemon_main
child_daemon_main(sys.argv[1:])
"""


def child_daemon_main(argv: list[str]) -> None:
    db, spool_dir, session_id, shim_pid, crash_at_commit, batch_max_bytes = argv
    store = Store(Path(db))
    commits = 0

    def on_commit() -> bool:
        nonlocal commits
        commits += 1
        if commits == int(crash_at_commit):
            os.kill(os.getpid(), signal.SIGKILL)  # inside the transaction's commit: it never lands
        return False

    store.db.set_commit_hook(on_commit)
    trio.run(
        partial(
            ingest_session,
            store,
            Path(spool_dir),
            session_id,
            int(shim_pid) or None,
            batch_max_bytes=int(batch_max_bytes),
        )
    )


@pytest.fixture
def spawn_child_daemon(db_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    children: list[subprocess.Popen] = []

    def spawn(
        spool_dir: Path, session_id: str, shim_pid: int = 0, crash_at_commit: int = 0, batch_max_bytes: int = 1 << 20
    ) -> subprocess.Popen:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD_DAEMON,
                str(db_path),
                str(spool_dir),
                session_id,
                str(shim_pid),
                str(crash_at_commit),
                str(batch_max_bytes),
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )
        children.append(child)
        return child

    yield spawn
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(10)


async def test_a_daemon_killed_in_the_middle_of_commits_resumes_without_loss_or_duplicates(
    db_path: Path, spool_dir: Path, spawn_child_daemon
) -> None:
    """Daemons SIGKILLed in the middle of a commit, again and again, leave a transcript the next one completes exactly once."""
    rng = random.Random(23)
    writer = SpoolWriter(spool_dir, segment_bytes=64 * 1024, max_segments=10_000)
    writer.append_event(spool.START, {"pid": 1, "shim_pid": 2, "started_at": time.time()})
    written = []
    index = 0
    while writer.segment < 70:  # about 4.5 MiB: several 1 MiB reads, so several commits
        kind = rng.choice([spool.STDOUT, spool.STDERR, spool.STDIN])
        data = b"%07d " % index + rng.randbytes(rng.randrange(0, 2000))
        writer.append(kind, data)
        written.append((STREAM_OF[kind], data))
        index += 1
    writer.append_event(spool.EXIT, {"exit_code": 0, "signal": None, "ended_at": time.time()})
    writer.close()
    store = Store(db_path)
    session_id = new_session(store, spool_dir=spool_dir)
    store.close()

    counts = [0]
    for crash_at_commit in (1, 2, 3, 2):
        # A batch fills with each 1 MiB read from the spool: one commit per read.
        child = spawn_child_daemon(spool_dir, session_id, crash_at_commit=crash_at_commit, batch_max_bytes=256 * 1024)
        assert child.wait(DEADLINE) == -signal.SIGKILL
        rows = rows_of(db_path, session_id)
        assert_gapless(rows)
        counts.append(len(rows))
        # Commit N died: exactly the N - 1 before it were kept.
        assert (counts[-1] == counts[-2]) == (crash_at_commit == 1)
        session = committed_session(db_path, session_id)
        assert session.spool_segment > 0 or crash_at_commit == 1
        assert session.spool_segment in spool.list_segments(spool_dir)
    assert counts[-1] < len(written)

    store = Store(db_path)
    try:
        returned, final = await ingest_session(store, spool_dir, session_id, shim_pid=None)
    finally:
        store.close()
    assert returned and final is not None and final.kind == spool.EXIT
    rows = rows_of(db_path, session_id)
    assert_gapless(rows)
    assert [(r.stream, r.data) for r in rows] == [("system", b"started\n"), *written, ("system", b"exit 0 None\n")]


# -- tail_spool with a real shim ---------------------------------------------------------

ECHO = """
import sys
for line in sys.stdin.buffer:
    sys.stdout.buffer.write(b'echo ' + line); sys.stdout.flush()
"""

# Answers each input line with 40 lines, some on stderr, one at a time.
BURSTS = """
import sys, time
for line in sys.stdin:
    word = line.strip()
    if word == 'end':
        break
    for i in range(40):
        stream = sys.stderr if i % 5 == 0 else sys.stdout
        stream.write(f'{word} {i:03d} ' + 'x' * i + '\\n'); stream.flush()
        time.sleep(0.001)
"""


def burst_output(words: list[str]) -> tuple[bytes, bytes]:
    out, err = b"", b""
    for word in words:
        for i in range(40):
            line = f"{word} {i:03d} {'x' * i}\n".encode()
            if i % 5 == 0:
                err += line
            else:
                out += line
    return out, err


class LiveShim:
    def __init__(self, spool_dir: Path, process: subprocess.Popen) -> None:
        self.spool_dir = spool_dir
        self.process = process
        self._fifo: int | None = None

    def send(self, data: bytes, kind: int = spool.FIFO_DATA) -> None:
        if self._fifo is None:
            self._fifo = os.open(self.spool_dir / spool.STDIN_FIFO, os.O_WRONLY)
        frame = spool.FIFO_FRAME.pack(kind, len(data)) + data
        assert os.write(self._fifo, frame) == len(frame)

    def close(self) -> None:
        if self._fifo is not None:
            os.close(self._fifo)


@pytest.fixture
def start_shim(tmp_path: Path) -> Iterator[Callable[..., LiveShim]]:
    """Real shims; in teardown each one and its command's group are ended, by PID."""
    shims: list[LiveShim] = []

    def start(code: str, spool_dir: Path) -> LiveShim:
        spec = {
            "argv": [sys.executable, "-c", code],
            "cwd": str(tmp_path),
            "env": {},
            "flush_interval": 0.02,
            "max_chunk_bytes": 65536,
            "segment_bytes": 64 << 20,  # one segment, kept: the test re-reads the whole spool
            "max_segments": 4,
            "stop_timeout": 2.0,
        }
        (spool_dir / spool.SPEC_FILE).write_text(json.dumps(spec))
        os.mkfifo(spool_dir / spool.STDIN_FIFO, 0o600)
        process = subprocess.Popen([sys.executable, "-m", "supervisor.shim", str(spool_dir)], stdin=subprocess.DEVNULL)
        shim = LiveShim(spool_dir, process)
        shims.append(shim)
        # Wait for START: the FIFO is held by the shim from then on.
        wait_for(lambda: any(r.kind == spool.START for r in spool_records(spool_dir)), what="START")
        return shim

    yield start
    for shim in shims:
        shim.close()
        end_shim_run(shim.process, spool_records(shim.spool_dir))


async def test_tail_spool_follows_a_live_shim_and_returns_its_exit_record(
    store: RecordingStore, db_path: Path, spool_dir: Path, start_shim, nursery
) -> None:
    """tail_spool stores a running session's output as it comes and returns the EXIT record once the command ends."""
    session_id = new_session(store, spool_dir=spool_dir)
    shim = start_shim(ECHO, spool_dir)
    result: list[tuple[bool, Record | None]] = []

    async def ingest() -> None:
        result.append(await ingest_session(store, spool_dir, session_id, shim.process.pid))

    nursery.start_soon(ingest)
    for word in (b"one", b"two\x00\xff", b"three"):
        shim.send(word + b"\n")
        await poll_until(
            lambda: any(r.data == b"echo " + word + b"\n" for r in rows_of(db_path, session_id)),
            f"echo of {word!r} to be committed",
        )
    assert not result  # still following
    shim.send(b"", spool.FIFO_EOF)
    await poll_until(lambda: result, "tail_spool to return")
    [(returned, final)] = result
    assert returned and final is not None and final.kind == spool.EXIT
    assert json.loads(final.data)["exit_code"] == 0
    rows = rows_of(db_path, session_id)
    assert_gapless(rows)
    assert [(r.stream, r.data) for r in rows] == expected_rows(spool_records(spool_dir))
    assert b"".join(r.data for r in rows if r.stream == "stdout") == b"echo one\necho two\x00\xff\necho three\n"
    assert shim.process.wait(DEADLINE) == 0


async def test_tail_spool_returns_none_when_the_shim_dies_without_writing_exit(
    store: RecordingStore, db_path: Path, spool_dir: Path, start_shim
) -> None:
    """When the shim is killed before it records an exit status, tail_spool wakes on its end and returns None."""
    session_id = new_session(store, spool_dir=spool_dir)
    shim = start_shim(ECHO, spool_dir)
    shim.send(b"before\n")
    wait_for(lambda: any(r.data == b"echo before\n" for r in spool_records(spool_dir)), what="the echo in the spool")
    shim.process.send_signal(signal.SIGKILL)
    with trio.fail_after(DEADLINE):
        returned, final = await ingest_session(store, spool_dir, session_id, shim.process.pid)
    assert returned and final is None
    assert [(r.stream, r.data) for r in rows_of(db_path, session_id)] == [
        ("system", b"started\n"),
        ("stdin", b"before\n"),
        ("stdout", b"echo before\n"),
    ]


async def test_a_daemon_stopped_while_a_shim_runs_resumes_exactly_where_it_committed(
    store: RecordingStore, db_path: Path, spool_dir: Path, start_shim, nursery
) -> None:
    """A daemon stopped mid-stream while the session keeps writing is resumed by the next one without a duplicate or a gap."""
    session_id = new_session(store, spool_dir=spool_dir)
    shim = start_shim(BURSTS, spool_dir)
    words = [f"w{n}" for n in range(9)]

    # First daemon: stops after some rows are committed, while bursts are still coming.
    for word in words[:3]:
        shim.send(word.encode() + b"\n")
    with trio.fail_after(DEADLINE):
        returned, _ = await ingest_session(store, spool_dir, session_id, shim.process.pid, stop_after_rows=12)
    assert not returned
    first = rows_of(db_path, session_id)
    assert_gapless(first)
    assert len(first) >= 12

    # Down for a while: the session goes on, into the spool.
    for word in words[3:6]:
        shim.send(word.encode() + b"\n")

    # Second daemon: runs to the end.
    result: list[tuple[bool, Record | None]] = []

    async def ingest() -> None:
        result.append(await ingest_session(store, spool_dir, session_id, shim.process.pid))

    nursery.start_soon(ingest)
    for word in words[6:]:
        shim.send(word.encode() + b"\n")
    shim.send(b"end\n")
    await poll_until(lambda: result, "the second daemon's tail_spool to return")
    [(returned, final)] = result
    assert returned and final is not None and final.kind == spool.EXIT

    rows = rows_of(db_path, session_id)
    assert_gapless(rows)
    assert [(r.stream, r.data) for r in rows[: len(first)]] == [(r.stream, r.data) for r in first]
    assert [(r.stream, r.data) for r in rows] == expected_rows(spool_records(spool_dir))
    out, err = burst_output(words)
    assert b"".join(r.data for r in rows if r.stream == "stdout") == out
    assert b"".join(r.data for r in rows if r.stream == "stderr") == err
    assert [r.data for r in rows if r.stream == "stdin"] == [w.encode() + b"\n" for w in words] + [b"end\n"]


async def test_daemons_sigkilled_at_any_moment_while_a_shim_runs_lose_and_repeat_nothing(
    db_path: Path, spool_dir: Path, start_shim, spawn_child_daemon
) -> None:
    """Daemon processes SIGKILLed at arbitrary moments while the session writes leave a transcript that is complete, once, in order."""
    store = Store(db_path)
    session_id = new_session(store, spool_dir=spool_dir)
    store.close()
    shim = start_shim(BURSTS, spool_dir)
    words = [f"k{n}" for n in range(12)]
    sent = 0

    def send_words(count: int) -> None:
        nonlocal sent
        for word in words[sent : sent + count]:
            shim.send(word.encode() + b"\n")
        sent += count

    counts = [0]
    for _ in range(3):
        child = spawn_child_daemon(spool_dir, session_id, shim_pid=shim.process.pid, batch_max_bytes=2048)
        await poll_until(lambda: row_count(db_path, session_id) > counts[-1], "the child daemon to commit")
        send_words(3)
        target = counts[-1] + 15
        await poll_until(lambda: row_count(db_path, session_id) >= target, f"{target} rows")
        child.send_signal(signal.SIGKILL)
        assert child.wait(DEADLINE) == -signal.SIGKILL
        rows = rows_of(db_path, session_id)
        assert_gapless(rows)
        counts.append(len(rows))
        send_words(1)  # while no daemon is running

    send_words(len(words) - sent)
    shim.send(b"end\n")
    store = Store(db_path)
    try:
        with trio.fail_after(DEADLINE):
            returned, final = await ingest_session(store, spool_dir, session_id, shim.process.pid)
    finally:
        store.close()
    assert returned and final is not None and final.kind == spool.EXIT

    rows = rows_of(db_path, session_id)
    assert_gapless(rows)
    assert [(r.stream, r.data) for r in rows] == expected_rows(spool_records(spool_dir))
    out, err = burst_output(words)
    assert b"".join(r.data for r in rows if r.stream == "stdout") == out
    assert b"".join(r.data for r in rows if r.stream == "stderr") == err
    assert shim.process.wait(DEADLINE) == 0
