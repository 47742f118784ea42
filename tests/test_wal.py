"""The WAL's size under output of every kind: checkpoints keep it bounded."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from supervisor.maintenance import WAL_HARD_BYTES
from tests.harness import DaemonHandle
from tests.helpers import py

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


def test_wal_stays_under_its_bound_under_full_speed_tiny_rows(daemon: DaemonHandle) -> None:
    """A session printing tiny lines as fast as it can for 8 s keeps the WAL under 100 MB."""
    assert WAL_HARD_BYTES < WAL_BOUND
    # One write per line: the shim reads them one or a few at a time, so rows are tiny.
    flood = "import os, time\nend = time.monotonic() + 8\ni = 0\nwhile time.monotonic() < end:\n    os.write(1, b'%d\\n' % i); i += 1"
    with WalWatch(daemon.database).running() as watch:
        session_id = daemon.start_session(py(flood))["id"]
        daemon.wait_ended(session_id, timeout=120)
    rows = daemon.session(session_id)["transcript"]["rows"]
    print(f"full-speed tiny rows: {rows} rows, WAL peak {watch.peak / MiB:.1f} MiB")
    assert rows > 10_000
    assert watch.peak < WAL_BOUND, f"WAL peak {watch.peak / MiB:.1f} MiB"
