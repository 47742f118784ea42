"""Tailing a session's spool: read what the shim appended, hand it to the ingestor,
sleep on inotify and the shim's pidfd until there is more, stop at the last record.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable
from pathlib import Path

import outcome
import structlog
import trio

from supervisor import linux, spool
from supervisor.ingest import Ingestor
from supervisor.linux import DirectoryWatch

log = structlog.get_logger()

# How much spool one session reads before giving others a turn.
READ_BUDGET = 1 << 20


class ShimWatch:
    """A pidfd for a session's shim: readable once the shim has exited."""

    def __init__(self, shim_pid: int | None) -> None:
        self.fd = linux.pidfd_open(shim_pid) if shim_pid is not None else None

    @property
    def ended(self) -> bool:
        return self.fd is None

    def close(self) -> None:
        if self.fd is not None:
            trio.lowlevel.notify_closing(self.fd)
            os.close(self.fd)
            self.fd = None


class Wakeups:
    """One file descriptor, readable when the spool grows or the shim ends: an epoll set
    holding the directory watch and the shim's pidfd, which trio waits on as one. (A
    nursery with a task per descriptor, made anew at every wait, cost the event loop
    more than reading the spool did: a line-by-line writer wakes it thousands of times
    a second.)"""

    def __init__(self, fds: list[int]) -> None:
        self._epoll = select.epoll()
        for fd in fds:
            self._epoll.register(fd, select.EPOLLIN)

    async def wait(self) -> set[int]:
        """Wait until one of the descriptors is readable; return those that are."""
        await trio.lowlevel.wait_readable(self._epoll.fileno())
        return {fd for fd, _events in self._epoll.poll(0)}

    def forget(self, fd: int) -> None:
        self._epoll.unregister(fd)

    def close(self) -> None:
        trio.lowlevel.notify_closing(self._epoll.fileno())
        self._epoll.close()


OnEvent = Callable[[spool.Record, spool.Position], None]
OnOutput = Callable[[bytes], None]


async def tail_spool(
    session_id: str,
    spool_dir: Path,
    position: spool.Position,
    shim_pid: int | None,
    ingestor: Ingestor,
    on_event: OnEvent,
    on_output: OnOutput,
) -> spool.Record | None:
    """Ingest a session's spool until its last record; return that record.

    Returns None when the shim is gone and the spool has no EXIT or SPAWN_FAILED record:
    the session's outcome cannot be known.
    """
    reader = spool.SpoolReader(spool_dir, position)
    # After a restart the daemon's own rows wait until the spool is read as far as it
    # reached when this tail began, which is past every record a daemon before could
    # have read and shown (Ingestor.replay); or until nothing more is there to read.
    replay_end: spool.Position | None = spool.end_position(spool_dir)
    try:
        watch: DirectoryWatch | None = DirectoryWatch(spool_dir)
    except OSError as error:
        # inotify instances are a per-user limit shared with every other program:
        # without one, look every flush_interval instead.
        log.warning("spool_watch_unavailable", session_id=session_id, error=str(error), fallback="polling")
        watch = None
    shim = ShimWatch(shim_pid)
    wakeups: Wakeups | None = None
    try:
        wakeups = Wakeups(([watch.fd] if watch is not None else []) + ([shim.fd] if shim.fd is not None else []))
        while True:
            await ingestor.wait_for_room(session_id)
            if watch is not None:
                watch.drain()
            items = reader.read(READ_BUDGET)
            latest_output = None
            for record, record_end in items:
                if record.kind in spool.STREAM_NAMES:
                    ingestor.append_read(session_id, spool.STREAM_NAMES[record.kind], record.data, record.timestamp)
                    ingestor.set_position(session_id, record_end, spool_dir)
                    if record.kind != spool.STDIN:
                        latest_output = record.data
                    continue
                if record.kind == spool.ROTATE:
                    ingestor.set_position(session_id, record_end, spool_dir)
                    continue
                if record.kind in (spool.EXIT, spool.SPAWN_FAILED):
                    ingestor.replayed(session_id)  # the spool's end: every output is read
                    # The last output's checkpoint check goes before the exit is
                    # recorded: nothing may change a session's status after its end.
                    if latest_output is not None:
                        on_output(latest_output)
                    on_event(record, record_end)
                    return record
                on_event(record, record_end)
            if latest_output is not None:
                on_output(latest_output)
            if replay_end is not None and (not items or reader.position >= replay_end):
                ingestor.replayed(session_id)
                replay_end = None
            if items:
                await trio.lowlevel.checkpoint()
                continue
            if shim.ended:
                return None
            if watch is not None:
                ready = await wakeups.wait()
            else:
                ready = set()
                with trio.move_on_after(ingestor.flush_interval):
                    ready = await wakeups.wait()
            if shim.fd is not None and shim.fd in ready:
                # One more read after the shim is gone picks up its last records.
                wakeups.forget(shim.fd)
                shim.close()
    finally:
        if wakeups is not None:
            wakeups.close()
        reader.close()
        if watch is not None:
            trio.lowlevel.notify_closing(watch.fd)
            close_elsewhere(watch)
        shim.close()


def close_elsewhere(watch: DirectoryWatch) -> None:
    """Close an inotify instance on a worker thread, without waiting. Closing one waits
    for the kernel's grace period (synchronize_srcu): 7-20 ms here, during which the
    event loop, which every session's end passes through, would stand still."""

    def closed(result: outcome.Outcome) -> None:
        if isinstance(result, outcome.Error):
            log.warning("spool_watch_close_failed", error=str(result.error))

    try:
        trio.lowlevel.start_thread_soon(watch.close, closed)
    except RuntimeError:  # no thread to be had (a process limit): close it here, slowly
        watch.close()
