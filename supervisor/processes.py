"""Is this still our process? By PID and start ticks (linux.py)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import psutil

from supervisor import linux


@dataclass(frozen=True)
class ProcessRef:
    """One process for good: its PID and its start time in clock ticks since boot."""

    pid: int
    start_ticks: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        """The process now running as pid, if any."""
        ticks = linux.running_start_ticks(pid)
        return cls(pid, ticks) if ticks is not None else None

    @classmethod
    def recorded(cls, pid: int | None, start_ticks: int | None, create_time: float | None = None) -> ProcessRef | None:
        """The process a session row names. A row from before start ticks were recorded
        (schema version 2) has only a create time: turned back into ticks on this boot."""
        if pid is None:
            return None
        if start_ticks is None:
            if create_time is None:
                return None
            start_ticks = linux.ticks_from_create_time(create_time)
        return cls(pid, start_ticks)

    def alive(self) -> bool:
        """True while this very process runs (not a reuse of its PID, not a zombie)."""
        return linux.running_start_ticks(self.pid) == self.start_ticks

    def create_time(self) -> float:
        """UNIX seconds, for people and the database; identity uses the ticks."""
        return linux.create_time_from_ticks(self.start_ticks)


def alive(process: ProcessRef | None) -> bool:
    return process is not None and process.alive()


def signal_group(leader: ProcessRef | None, signum: int) -> bool:
    """Signal a session's process group, but only while its leader is still the process
    recorded: a reused PID is never signalled. True if the signal was sent."""
    if not alive(leader):
        return False
    try:
        os.killpg(leader.pid, signum)  # type: ignore[union-attr]
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_process(process: ProcessRef | None) -> bool:
    """SIGKILL one process, only if it is still the one recorded."""
    if not alive(process):
        return False
    try:
        os.kill(process.pid, signal.SIGKILL)  # type: ignore[union-attr]
    except (ProcessLookupError, PermissionError):
        return False
    return True


def find_shim(spool_dir: Path) -> ProcessRef | None:
    """The running shim for this spool directory, found by its command line.

    Only for the moment between spawning a shim and recording its PID, which a crash
    can fall into: then nothing else names it.
    """
    wanted = str(spool_dir)
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if len(cmdline) >= 4 and cmdline[-3:] == ["-m", "supervisor.shim", wanted]:
            ref = ProcessRef.of(process.pid)
            if ref is not None:
                return ref
    return None
