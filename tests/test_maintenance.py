"""The upkeep loops' timing: when the WAL is checkpointed or emptied, when retention runs,
when the systemd watchdog is pinged.

The loops run for real on real SQLite files, with the real writer thread, ingestor and
checkpointer, under a virtual clock, so minutes of their time take milliseconds. The
product reads its idle and interval times from time.monotonic(); here that reads the
virtual clock too (on the loops' and the ingestor's modules only).

trio's autojump_clock does not fit: it jumps to the next deadline whenever every task
waits, and a task waiting for a worker thread waits, so each commit or checkpoint would
skip a loop's whole interval. ThreadClock jumps the same way, except while a worker
thread works for a task: then it stands still, as if SQLite took no time at all.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
import types
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from supervisor import maintenance
from supervisor.config import Config, Retention
from supervisor.database import BackgroundThread, DatabaseWriter, ReaderPool
from supervisor.ingest import Ingestor
from supervisor.model import iso_from_unix, utc_now
from supervisor.store import Checkpointer, Reader, Session, Store
from tests.helpers import notify_receiver

POLL = 0.01  # virtual seconds between two looks at the outcome
SLACK = 2 * POLL  # virtual seconds a "by" bound allows: the polls' own granularity


class Counting(BackgroundThread):
    """A real background thread, counting the calls in flight on every one of them (the
    clock waits for them)."""

    in_flight = 0

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        Counting.in_flight += 1
        try:
            return await super().run(fn, *args, **kwargs)
        finally:
            Counting.in_flight -= 1


class CountingWriter(Counting, DatabaseWriter):
    """The real writer thread, counted."""


class ThreadClock(trio.abc.Clock):
    """Virtual time: jumps to the next deadline whenever every task waits, except while
    a worker thread (trio.to_thread's, the database writer's or the checkpoints') works for one."""

    def __init__(self) -> None:
        self.now = 0.0

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self.now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        # The run loop asks this only when no task can run: every task waits.
        if deadline <= self.now:
            return 0.0
        threads = trio.to_thread.current_default_thread_limiter().borrowed_tokens + Counting.in_flight
        if threads or deadline == float("inf"):
            return 0.001  # real seconds: let the thread finish (its result wakes the loop sooner)
        self.now = deadline
        return 0.0


@pytest.fixture
def clock() -> ThreadClock:
    """pytest-trio runs a test that asks for this fixture under this clock."""
    return ThreadClock()


class RecordingCheckpointer(Checkpointer):
    """The real checkpointer, noting each call as (kind, virtual time it began)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls: list[tuple[str, float]] = []
        self.token = trio.lowlevel.current_trio_token()  # the checkpoints' thread is not trio's

    def _note(self, kind: str) -> None:
        self.calls.append((kind, trio.from_thread.run_sync(trio.current_time, trio_token=self.token)))

    def checkpoint(self) -> tuple[int, int]:
        self._note("checkpoint")
        return super().checkpoint()

    def truncate(self) -> bool:
        self._note("truncate")
        return super().truncate()

    def times(self, kind: str) -> list[float]:
        return [at for called, at in self.calls if called == kind]


@dataclass
class Parts:
    """What checkpoint_loop works on: one database, as the daemon opens it."""

    store: Store
    writer: DatabaseWriter
    ingestor: Ingestor
    checkpointer: RecordingCheckpointer
    checkpoints: BackgroundThread
    session_id: str

    def wal_bytes(self) -> int:
        return maintenance.wal_file_bytes(self.store)

    async def commit(self, rows: int = 1, size: int = 100) -> float:
        """Commit rows of output through the ingestor; the virtual time it committed."""
        for _ in range(rows):
            self.ingestor.append(self.session_id, "stdout", b"x" * size)
        await self.ingestor.flush()
        return trio.current_time()


@pytest.fixture
def virtual_monotonic(monkeypatch: pytest.MonkeyPatch) -> None:
    """time.monotonic() in the loops' and the ingestor's modules reads trio's clock."""
    virtual = types.SimpleNamespace(monotonic=trio.current_time, time=time.time)
    # Not the writer thread's module: it reads the clock off trio's thread.
    loops = {loop_module(maintenance.checkpoint_loop), loop_module(maintenance.retention_loop)}
    for module in loops | {loop_module(Ingestor)}:
        monkeypatch.setattr(module, "time", virtual)


def loop_module(thing: Any) -> types.ModuleType:
    """The module a loop (or class) lives in: where it reads its clock and constants."""
    return sys.modules[thing.__module__]


@pytest.fixture
async def parts(tmp_path: Path, virtual_monotonic: None) -> AsyncIterator[Parts]:
    store = Store(tmp_path / "slotd.db")
    session = Session(
        id=str(uuid.uuid4()), arrival=0, argv=["true"], cwd="/", status="running", queued_at=utc_now(), slot=1
    )
    store.create_session(session)
    writer = CountingWriter(store)
    ingestor = Ingestor(writer, flush_interval=60.0, batch_max_bytes=1 << 20)
    ingestor.register(session.id, 0)
    checkpointer = RecordingCheckpointer(store.path)
    checkpoints = Counting("slotd-checkpt")
    yield Parts(store, writer, ingestor, checkpointer, checkpoints, session.id)
    writer.close()
    checkpoints.close()
    checkpointer.close()
    store.close()


@pytest.fixture
async def run_loop(parts: Parts) -> AsyncIterator[Callable[[], object]]:
    """Start checkpoint_loop on parts (after the test has set its constants)."""
    async with trio.open_nursery() as nursery:

        async def start() -> None:
            await nursery.start(
                maintenance.checkpoint_loop, parts.ingestor, parts.writer, parts.checkpointer, parts.checkpoints
            )

        yield start
        nursery.cancel_scope.cancel()


async def wait_until(condition: Callable[[], object], within: float) -> float:
    """Poll condition every POLL virtual seconds; the virtual time it held. Fails after within."""
    with trio.fail_after(within):
        while not condition():
            await trio.sleep(POLL)
    return trio.current_time()


# -- the WAL ----------------------------------------------------------------------------


async def test_the_wal_file_is_emptied_once_no_commit_came_for_idle_seconds(clock, parts, run_loop):
    """While commits keep coming the WAL file is left alone; IDLE_SECONDS after the last one it is truncated to nothing."""
    await run_loop()
    last = 0.0
    for _ in range(8):  # every 0.3 s for 2.4 s: never idle
        last = await parts.commit()
        await trio.sleep(0.3)
    assert parts.wal_bytes() > 0
    emptied = await wait_until(lambda: parts.wal_bytes() == 0, within=10)
    (truncated, *_) = parts.checkpointer.times("truncate")
    assert last + maintenance.IDLE_SECONDS <= truncated <= emptied
    assert emptied <= last + maintenance.IDLE_SECONDS + maintenance.CHECKPOINT_INTERVAL + maintenance.ROUND_GAP + SLACK
    # Rounds kept running all the while, beside the commits.
    assert len(parts.checkpointer.times("checkpoint")) >= 2


async def test_an_empty_wal_file_is_left_alone_when_idle(clock, parts, run_loop):
    """An idle daemon with an empty WAL file makes no checkpoint calls at all."""
    await run_loop()
    await parts.commit()
    await wait_until(lambda: parts.wal_bytes() == 0, within=10)
    calls = len(parts.checkpointer.calls)
    await trio.sleep(60)
    assert len(parts.checkpointer.calls) == calls


async def test_a_commit_that_leaves_the_wal_long_starts_a_round_at_once(clock, parts, run_loop, monkeypatch):
    """Short commits wait for the timer; a commit that takes the WAL past WAL_RESTART_BYTES gets a checkpoint at once, and the WAL starts over."""
    page = parts.store.page_size
    module = loop_module(maintenance.checkpoint_loop)
    # The timer never fires here: whatever round runs, a commit started it.
    monkeypatch.setattr(module, "CHECKPOINT_INTERVAL", 10_000.0)
    monkeypatch.setattr(module, "WAL_RESTART_BYTES", 64 * page)
    await run_loop()
    await parts.commit(rows=4, size=page // 2)
    assert 0 < parts.store.wal_frames < 64
    await trio.sleep(30)
    assert parts.checkpointer.calls == []

    long_commit = await parts.commit(rows=200, size=page // 2)
    assert parts.store.wal_frames >= 64
    checkpointed = await wait_until(lambda: parts.checkpointer.times("checkpoint"), within=30)
    assert parts.checkpointer.times("checkpoint")[0] <= checkpointed <= long_commit + SLACK
    # Every frame copied: the next transaction writes the WAL from its beginning.
    await trio.sleep(maintenance.ROUND_GAP + SLACK)
    await parts.commit()
    assert parts.store.wal_frames < 8


async def test_no_checkpoint_touches_a_database_file_that_was_replaced(clock, parts, run_loop, tmp_path):
    """Once the database path names another file, no round checkpoints or truncates, however idle the daemon."""
    await run_loop()
    await parts.commit()
    parts.store.path.rename(tmp_path / "moved.db")
    parts.store.path.write_bytes(b"")
    assert parts.store.file_problem() is not None
    calls = len(parts.checkpointer.calls)
    await trio.sleep(30)
    assert parts.checkpointer.calls[calls:] == []


# -- retention ----------------------------------------------------------------------------


def ended_session(store: Store, days_ago: float) -> str:
    """An ended session that ended days_ago (real time: retention compares wall-clock dates)."""
    ended = iso_from_unix(time.time() - days_ago * 86400)
    session = Session(
        id=str(uuid.uuid4()),
        arrival=0,
        argv=["true"],
        cwd="/",
        status="completed",
        queued_at=ended,
        ended_at=ended,
        exit_code=0,
    )
    return store.create_session(session).id


def exists(store_path: Path, session_id: str) -> bool:
    reader = Reader(store_path)
    try:
        return reader.get_session(session_id) is not None
    finally:
        reader.close()


async def test_age_pruning_runs_at_start_then_once_per_prune_interval(clock, tmp_path, virtual_monotonic):
    """retention_loop prunes old sessions on its first pass, then no more often than every PRUNE_INTERVAL."""
    store = Store(tmp_path / "slotd.db")
    writer = CountingWriter(store)
    readers = ReaderPool(store.path)
    config = Config(
        source=None,
        state_dir=tmp_path,
        runtime_dir=tmp_path,
        socket=tmp_path / "slotd.sock",
        retention=Retention(max_age_days=1),
    )
    first = ended_session(store, days_ago=2)
    try:
        async with trio.open_nursery() as nursery:
            started = trio.current_time()
            await nursery.start(maintenance.retention_loop, config, writer, readers)
            pruned = await wait_until(lambda: not exists(store.path, first), within=10)
            assert pruned - started <= maintenance.CAP_INTERVAL + SLACK
            second = await writer.run(ended_session, store, 2)
            # Not pruned before PRUNE_INTERVAL has passed since the first pass, but then.
            await trio.sleep(pruned - trio.current_time() + maintenance.PRUNE_INTERVAL - 2 * maintenance.CAP_INTERVAL)
            assert exists(store.path, second)
            again = await wait_until(lambda: not exists(store.path, second), within=3 * maintenance.CAP_INTERVAL)
            assert again - pruned >= maintenance.PRUNE_INTERVAL - maintenance.CAP_INTERVAL
            nursery.cancel_scope.cancel()
    finally:
        writer.close()
        readers.close()
        store.close()


# -- the systemd watchdog -------------------------------------------------------------------


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    with notify_receiver(monkeypatch) as sock:
        yield sock


async def test_watchdog_pings_stop_while_a_writer_call_is_stuck_and_resume_after(
    autojump_clock, receiver, tmp_path, monkeypatch
):
    """WATCHDOG=1 goes out every interval; once one writer call has run for two intervals the pings stop, and they resume when it returns."""
    # Here virtual time must pass while the writer thread works: trio's autojump clock,
    # read by the writer's own stall timer too (from its thread: MockClock allows that).
    monkeypatch.setattr(
        loop_module(DatabaseWriter),
        "time",
        types.SimpleNamespace(monotonic=autojump_clock.current_time, time=time.time),
    )
    store = Store(tmp_path / "slotd.db")
    writer = DatabaseWriter(store)
    interval = 1.0
    pings: list[float] = []
    stuck, release = threading.Event(), threading.Event()

    def stuck_call() -> None:
        stuck.set()
        release.wait()

    returned = trio.Event()

    async def stuck_writer_call() -> None:
        await writer.run(stuck_call)
        returned.set()

    async def listen() -> None:
        while True:
            await trio.lowlevel.wait_readable(receiver)
            if receiver.recv(64) == b"WATCHDOG=1":
                pings.append(trio.current_time())

    try:
        async with trio.open_nursery() as nursery:
            try:
                nursery.start_soon(listen)
                await nursery.start(maintenance.watchdog_loop, writer, interval)
                await trio.sleep(5.5)
                assert len(pings) == 6  # at 0, 1, ... 5
                nursery.start_soon(stuck_writer_call)
                while not stuck.is_set():  # never idle, so no virtual time passes meanwhile
                    await trio.lowlevel.checkpoint()
                stuck_at = trio.current_time()
                await trio.sleep(10)
                during = [at for at in pings if at > stuck_at]
                assert during and all(at < stuck_at + 2 * interval for at in during), (stuck_at, during)
                release.set()
                await returned.wait()
                returned_at = trio.current_time()
                await trio.sleep(3)
                after = [at for at in pings if at > returned_at]
                assert len(after) >= 2 and after[0] <= returned_at + interval, (returned_at, after)
            finally:
                release.set()
                nursery.cancel_scope.cancel()
    finally:
        writer.close()
        store.close()
