"""Store calls off the event loop: one writer thread, a small pool of readers.

An APSW commit or checkpoint can stall for milliseconds (or seconds on a slow disk);
run on the trio thread it would stall the control socket too.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from supervisor.store import Reader, Store

T = TypeVar("T")


class DatabaseWriter:
    """Runs Store calls one at a time in a worker thread, and tracks that they progress."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._limiter = trio.CapacityLimiter(1)
        self._busy_since: float | None = None
        self.last_finished = time.monotonic()

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Call fn(*args, **kwargs) (a bound Store method) in the writer thread."""
        async with self._limiter:
            self._busy_since = time.monotonic()
            try:
                # Not abandoned on cancel: a write in flight always completes or fails.
                return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
            finally:
                self._busy_since = None
                self.last_finished = time.monotonic()

    def stalled_for(self) -> float:
        """Seconds the current call has been running; 0 when idle."""
        if self._busy_since is None:
            return 0.0
        return time.monotonic() - self._busy_since


class ReaderPool:
    """Read-only connections lent to worker threads, so queries never wait for commits."""

    def __init__(self, path: Path, size: int = 4) -> None:
        self.path = path
        self._limiter = trio.CapacityLimiter(size)
        self._idle: list[Reader] = []

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Call fn(reader, *args) in a worker thread with a connection of its own."""
        async with self._limiter:
            reader = self._idle.pop() if self._idle else None
            try:
                if reader is None:
                    reader = await trio.to_thread.run_sync(Reader, self.path)
                result = await trio.to_thread.run_sync(fn, reader, *args, abandon_on_cancel=False)
            except BaseException:
                if reader is not None:
                    reader.close()
                raise
            self._idle.append(reader)
            return result

    def close(self) -> None:
        for reader in self._idle:
            reader.close()
        self._idle.clear()
