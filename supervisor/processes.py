"""Is this still our process? psutil checks by PID and create time, and the boot id."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

# Create times are floats computed from clock ticks; allow for rounding, not more.
CREATE_TIME_TOLERANCE = 0.05


def current_boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def same_process(pid: int | None, create_time: float | None) -> bool:
    """True when pid is the very process that was recorded, not a reuse of its number."""
    if pid is None or create_time is None:
        return False
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - create_time) > CREATE_TIME_TOLERANCE:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def signal_group(pgid: int | None, create_time: float | None, signum: int) -> bool:
    """Signal a session's process group, but only while its leader is still the process
    recorded: a reused PID is never signalled. True if the signal was sent."""
    if not same_process(pgid, create_time):
        return False
    try:
        os.killpg(pgid, signum)  # type: ignore[arg-type]
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_process(pid: int | None, create_time: float | None) -> bool:
    """SIGKILL one process, only if it is still the one recorded."""
    if not same_process(pid, create_time):
        return False
    try:
        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
    except (ProcessLookupError, PermissionError):
        return False
    return True


def find_shim(spool_dir: Path) -> int | None:
    """The PID of a running shim for this spool directory, found by its command line.

    Only for the moment between spawning a shim and recording its PID, which a crash
    can fall into: then nothing else names it.
    """
    wanted = str(spool_dir)
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if len(cmdline) >= 4 and cmdline[-3:] == ["-m", "supervisor.shim", wanted]:
            if process.status() != psutil.STATUS_ZOMBIE:
                return process.pid
    return None

