"""Store calls off the event loop: one writer thread, a small pool of readers, and the
dedicated background threads the writer's is one of.

An APSW commit or checkpoint can stall for milliseconds (or seconds on a slow disk);
run on the trio thread it would stall the control socket too.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import outcome
import trio

from supervisor import linux
from supervisor.store import Reader, Store

T = TypeVar("T")


# The threads doing bulk work (commits, checkpoints) yield the CPU to the event loop:
# when two sessions write at full speed they keep a core busy, and at the loop's own
# priority every request and every row a follower waits for would queue behind them
# for a core. They run as SCHED_IDLE, which the loop preempts the moment it wakes
# (bench/latency.py, alternated with nice +5: the loop's wait for a core 0.9-1.3 s
# against 1.4-1.6 s per 10.7 s, ps p99 7.0-10.5 ms against 9.0-10.7). But they must
# still keep up with the sessions where the scheduler weighs the daemon's threads and
# the sessions together (no autogroups, or a systemd unit's cgroup), and there a
# SCHED_IDLE thread starves behind busy sessions. So a thread that falls behind, a call
# having waited LATE_AFTER to start, runs as a normal thread BACKGROUND_NICE above the
# loop, which still wins over the sessions (session_nice, 10 by default), until it has
# kept up for CATCH_UP.
BACKGROUND_NICE = 5
LATE_AFTER = 0.25
CATCH_UP = 10.0


class Yielding:
    """How readily the calling (background) thread gives up the CPU: as SCHED_IDLE while
    it keeps up, as a normal thread BACKGROUND_NICE above the loop while it catches up."""

    def __init__(self, name: str, catch_up: float) -> None:
        linux.name_thread(name)
        linux.raise_thread_nice(BACKGROUND_NICE)  # what it runs at when not idle
        self.catch_up = catch_up
        # Without the privilege to leave SCHED_IDLE, the thread never enters it.
        self.may_idle = linux.can_leave_idle_policy()
        self.idle = self.may_idle and linux.set_idle_policy(True)
        self.caught_up_at: float | None = None  # when it goes back to SCHED_IDLE

    def starting(self, waited: float, now: float) -> None:
        """A call starts after waiting `waited` seconds in the queue."""
        if waited > LATE_AFTER:
            if self.idle:
                self.idle = not linux.set_idle_policy(False)
            if not self.idle and self.may_idle:
                self.caught_up_at = now + self.catch_up
        elif self.caught_up_at is not None and now >= self.caught_up_at:
            self.caught_up_at = None
            self.idle = linux.set_idle_policy(True)


class BackgroundThread:
    """Runs calls one at a time on a dedicated thread that yields the CPU to the event
    loop (Yielding), and tracks that they progress.

    A dedicated thread fed by a queue, rather than trio.to_thread: handing over a job
    then takes no trip through the scheduler, so a commit starts the moment it is asked
    for instead of after every busy task has had its turn; and its priority is its own,
    where the threads trio lends out also serve requests.
    """

    def __init__(self, name: str, catch_up: float = CATCH_UP) -> None:
        self.name = name  # the thread's, as top -H shows it: 15 characters at most
        self.catch_up = catch_up
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._busy_since: float | None = None

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Call fn(*args, **kwargs) on the thread."""
        if self._thread is None:
            self._token = trio.lowlevel.current_trio_token()
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()
        done = trio.Event()
        box: list[outcome.Outcome] = []

        def deliver(result: outcome.Outcome) -> None:
            box.append(result)
            done.set()

        self._jobs.put((functools.partial(fn, *args, **kwargs), deliver, time.monotonic()))
        # A call in flight always completes or fails; its caller waits for which.
        with trio.CancelScope(shield=True):
            await done.wait()
        return box[0].unwrap()

    def _work(self) -> None:
        yielding = Yielding(self.name, self.catch_up)
        while (job := self._jobs.get()) is not None:
            call, deliver, queued_at = job
            self._busy_since = now = time.monotonic()
            yielding.starting(now - queued_at, now)
            result = outcome.capture(call)
            self._busy_since = None
            try:
                assert self._token is not None
                self._token.run_sync_soon(deliver, result)
            except trio.RunFinishedError:
                return

    def close(self) -> None:
        """Finish the queued calls and stop the thread."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def stalled_for(self) -> float:
        """Seconds the current call has been running; 0 when idle."""
        busy_since = self._busy_since
        if busy_since is None:
            return 0.0
        return time.monotonic() - busy_since


class DatabaseWriter(BackgroundThread):
    """Runs Store calls (bound Store methods) one at a time on the writer thread."""

    def __init__(self, store: Store) -> None:
        super().__init__("slotd-writer")
        self.store = store


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
