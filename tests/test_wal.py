"""The WAL's size under output of every kind: checkpoints keep it bounded."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import apsw
import pytest
import trio
import trio.testing

from supervisor import maintenance
from supervisor.database import BackgroundThread, DatabaseWriter
from supervisor.ingest import Ingestor
from supervisor.maintenance import WAL_HARD_BYTES
from supervisor.store import Batch, Checkpointer, Row, Store
from tests.harness import DaemonHandle
from tests.helpers import new_session, py

MiB = 1024 * 1024
# The README's bound for the WAL file, whatever the sessions print.
WAL_BOUND = 100 * 1000 * 1000
# A light writer's WAL restarts every checkpoint interval (0.5 s): a few commits' pages.
LIGHT_WAL_BOUND = 1 * MiB


class WalWatch:
    """Samples the size of a database's WAL file every 10 ms; keeps the largest."""

    def __init__(self, database: Path) -> None:
        self.path = Path(f"{database}-wal")
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, os.stat(self.path).st_size)
            except FileNotFoundError:
                pass

    @contextmanager
    def running(self) -> Iterator[WalWatch]:
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def test_wal_stays_under_1_mib_under_steady_light_output(daemon: DaemonHandle) -> None:
    """Three sessions printing a 30-byte line every 0.1 s for 10 s keep the WAL under 1 MiB, and their rows reach the database file."""
    line = "import time\nfor i in range(100000): print(f'light output line {i:010d}', flush=True); time.sleep(0.1)"
    sessions = [daemon.start_session(py(line))["id"] for _ in range(3)]
    with WalWatch(daemon.database).running() as watch:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert all(daemon.session(s)["status"] == "running" for s in sessions)
            time.sleep(0.5)
    rows = sum(daemon.session(s)["transcript"]["rows"] for s in sessions)
    print(f"steady light output: {rows} rows, WAL peak {watch.peak / MiB:.2f} MiB")
    assert rows >= 200
    assert watch.peak < LIGHT_WAL_BOUND, f"WAL peak {watch.peak} bytes"
    assert daemon.database.stat().st_size > 64 * 1024  # checkpointed, not all in the WAL


def test_wal_stays_under_its_bound_under_a_full_speed_line_writer(daemon: DaemonHandle) -> None:
    """A session printing tiny lines as fast as it can for 8 s keeps the WAL under 100 MB."""
    assert WAL_HARD_BYTES < WAL_BOUND
    # One write per line: the shim gathers them into reads of up to 256 KiB (its
    # streaming pause), so rows are many lines each, thousands of them.
    flood = "import os, time\nend = time.monotonic() + 8\ni = 0\nwhile time.monotonic() < end:\n    os.write(1, b'%d\\n' % i); i += 1"
    with WalWatch(daemon.database).running() as watch:
        session_id = daemon.start_session(py(flood))["id"]
        daemon.wait_ended(session_id, timeout=120)
    rows = daemon.session(session_id)["transcript"]["rows"]
    print(f"full-speed line writer: {rows} rows, WAL peak {watch.peak / MiB:.1f} MiB")
    assert rows > 1_000
    assert watch.peak < WAL_BOUND, f"WAL peak {watch.peak / MiB:.1f} MiB"


def test_a_checkpoint_interrupted_from_another_thread_stops_and_the_next_one_runs(tmp_path: Path) -> None:
    """Checkpointer.interrupt stops a passive checkpoint running on another thread (apsw.InterruptError, what it copied kept); after an interrupt that met no checkpoint and forget_interrupt, the next checkpoint copies the rest."""
    store = Store(tmp_path / "slotd.db")
    checkpointer = Checkpointer(tmp_path / "slotd.db")
    try:
        session_id = new_session(store)
        batch = Batch()
        for seq in range(1, 3001):  # 90 MB of WAL: a pass takes tens of milliseconds
            batch.add_row(Row(session_id, seq, 0.0, "stdout", os.urandom(30_000)))
        store.commit_batch(batch)
        outcome: list[object] = []

        def pass_on_a_thread() -> None:
            try:
                outcome.append(checkpointer.checkpoint())
            except apsw.InterruptError as error:
                outcome.append(error)

        thread = threading.Thread(target=pass_on_a_thread)
        thread.start()
        time.sleep(0.005)
        checkpointer.interrupt()
        thread.join()
        assert isinstance(outcome[0], apsw.InterruptError), outcome
        # One that comes when none runs would stop the next: forget_interrupt clears it.
        checkpointer.interrupt()
        checkpointer.forget_interrupt()
        log_frames, done = checkpointer.checkpoint()
        assert log_frames == done > 0
    finally:
        checkpointer.close()
        store.close()


async def test_a_background_pass_overtaken_by_commits_says_the_wal_is_past_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background checkpoint pass during which commits take the WAL past WAL_HARD_BYTES (here while it waits for its thread) returns None, so the writer thread copies the rest; one within the bound returns its frames."""
    monkeypatch.setattr(maintenance, "WAL_HARD_BYTES", 8 * MiB)
    store = Store(tmp_path / "slotd.db")
    checkpointer = Checkpointer(tmp_path / "slotd.db")
    writer = DatabaseWriter(store)
    checkpoints = BackgroundThread("test-checkpt")
    try:
        session_id = new_session(store)
        ingestor = Ingestor(writer, flush_interval=60.0, batch_max_bytes=64 * MiB)
        ingestor.register(session_id, 0)
        async with trio.open_nursery() as nursery:
            await nursery.start(ingestor.run)

            async def commit(megabytes: int) -> None:
                for _ in range(megabytes * 32):
                    ingestor.append_read(session_id, "stdout", os.urandom(32 * 1024), 0.0)
                await ingestor.commit_now()

            interrupted: list[apsw.InterruptError] = []
            checkpoint = checkpointer.checkpoint

            def noting_interrupts() -> tuple[int, int]:
                try:
                    return checkpoint()
                except apsw.InterruptError as error:
                    interrupted.append(error)
                    raise

            monkeypatch.setattr(checkpointer, "checkpoint", noting_interrupts)
            await commit(2)
            within = await maintenance.background_pass(writer, ingestor, checkpointer, checkpoints)
            assert within is not None and within[0] == within[1] > 0

            # The checkpoints thread busy elsewhere: the pass waits for it while the
            # commits take the WAL past the bound.
            busy, occupied = threading.Event(), threading.Event()

            def occupy() -> None:
                occupied.set()
                busy.wait()

            nursery.start_soon(checkpoints.run, occupy)
            while not occupied.is_set():
                await trio.sleep(0.001)
            passes: list[tuple[int, int] | None] = []

            async def one_pass() -> None:
                passes.append(await maintenance.background_pass(writer, ingestor, checkpointer, checkpoints))

            nursery.start_soon(one_pass)
            await trio.testing.wait_all_tasks_blocked()
            await commit(10)
            assert store.wal_frames * store.page_size >= 8 * MiB
            busy.set()
            while not passes:
                await trio.sleep(0.01)
            assert passes == [None]
            assert len(interrupted) == 1  # stopped by the interrupt, not only judged after
            # Nothing of it is left to stop the next ones.
            assert await checkpoints.run(checkpointer.checkpoint) is not None
            assert await checkpoints.run(checkpointer.truncate)
            nursery.cancel_scope.cancel()
    finally:
        checkpoints.close()
        writer.close()
        checkpointer.close()
        store.close()
