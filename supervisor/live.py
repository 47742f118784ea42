"""The live sessions, as the daemon knows them in memory: each one's state beyond its
database row, and the table of them that says which slot each holds.

A session is live (running, paused or waiting_checkpoint) from the moment a slot is
reserved for it until the runner has recorded how it ended; at most `slots` are at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from supervisor import linux, spool
from supervisor.processes import ProcessRef, alive
from supervisor.protocol import EXITED_WHILE_BLOCKED

# Why a stop was asked for, unless its timeout asked (see LiveSession.stop_reason).
STOPPED_ON_REQUEST = "stopped on request"
# How often a stop looks whether a blocked session's command is gone (/proc).
GONE_POLL_INTERVAL = 0.05


@dataclass
class LiveSession:
    """What the daemon knows of a live session beyond its database row."""

    id: str
    slot: int
    status: str
    spool_dir: Path
    shim: ProcessRef | None = None
    command: ProcessRef | None = None  # the command, leader of the session's group
    stop_requested: bool = False
    stop_reason: str | None = None  # why: on request, or its timeout
    timeout: float | None = None  # seconds it may run
    deadline: float | None = None  # UNIX time its timeout stops it at
    # Set once the exit (or a failed start) is read: no status may change after it.
    final: bool = False
    # Set once the command has started, or once it is known that it never will.
    started: trio.Event = field(default_factory=trio.Event)
    ended: trio.Event = field(default_factory=trio.Event)
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    # Set while its shim waits for space on the runtime directory's disk: where, and
    # since when (its output waits in the command's pipe meanwhile).
    output_blocked: str | None = None

    def decide_end(self, status: str) -> None:
        """Its end is read (or decided) and on its way to the database: no status may
        change after it, and actions on a live session are refused from now on, naming
        this status, as they will be once it is committed."""
        self.final = True
        self.status = status

    def command_gone(self) -> bool:
        """Its command started and has ended (a command that ended while the daemon was
        down is not even known by its process: command is None then)."""
        return self.started.is_set() and not alive(self.command)

    def output_note(self) -> str | None:
        """What `ps`, `show` and `info` say of its output: None, or why it waits, and
        whether its command has exited meanwhile (its exit status then waits too)."""
        if self.output_blocked is None:
            return None
        if self.command_gone():
            return f"{self.output_blocked}: {EXITED_WHILE_BLOCKED}"
        return f"{self.output_blocked}: its output waits in the command's pipe"


def shim_blocked(live: LiveSession) -> bool:
    """The session's shim waits for disk space (it says so by its name, see
    Shim.on_spool_blocked: reading it needs no disk)."""
    shim = live.shim
    return shim is not None and linux.process_name(shim.pid) == spool.NO_SPACE_NAME and shim.alive()


def ended_or_gone(live: LiveSession) -> bool:
    """Its end is recorded, or its command is gone while its shim waits for disk space
    to record that end (it is then recorded once there is room)."""
    return live.ended.is_set() or (live.command_gone() and shim_blocked(live))


async def wait_ended_or_gone(live: LiveSession) -> None:
    while not ended_or_gone(live):
        with trio.move_on_after(GONE_POLL_INTERVAL):
            await live.ended.wait()


class LiveSessions:
    """The live sessions by id, each in one of the slots numbered 1 to `slots`.

    It also carries the dispatcher's wake-up: whoever frees a slot (or otherwise lets a
    queued session start) says so here, and the dispatcher waits for it here.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._by_id: dict[str, LiveSession] = {}
        # Shutdown with mode stop: no session may start any more.
        self.closed = False
        self._dispatch_wanted = trio.Event()

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_id

    def __iter__(self) -> Iterator[LiveSession]:
        # A copy: the caller may await (and sessions come and go) while it iterates.
        return iter(list(self._by_id.values()))

    def get(self, session_id: str) -> LiveSession | None:
        return self._by_id.get(session_id)

    def by_slot(self) -> list[LiveSession]:
        return sorted(self._by_id.values(), key=lambda live: live.slot)

    def add(self, live: LiveSession) -> None:
        """Take its slot (no await may come between free_slot and this)."""
        self._by_id[live.id] = live

    def remove(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    def free_slot(self) -> int | None:
        """The lowest slot no live session holds, if any."""
        taken = {live.slot for live in self._by_id.values()}
        for slot in range(1, self.slots + 1):
            if slot not in taken:
                return slot
        return None

    def wake_dispatch(self) -> None:
        """A queued session may start now (a slot freed, draining ended, the daemon is ready)."""
        self._dispatch_wanted.set()

    async def wait_dispatch_wanted(self) -> None:
        await self._dispatch_wanted.wait()
        self._dispatch_wanted = trio.Event()
