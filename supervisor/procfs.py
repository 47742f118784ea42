"""Process identity from /proc, standard library only (the shim uses it too).

A PID names a process only until it is reused; (PID, start time) names it for good.
The start time is field 22 of /proc/PID/stat, in clock ticks since boot. Unlike a
create time in UNIX seconds (psutil's, which adds the boot time), it does not move when
the clock is stepped (NTP's first sync, a VM resumed), so it is what identity compares.
"""

from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat from field 3 on, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            content = stat.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return content[content.rindex(b")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def running_start_ticks(pid: int) -> int | None:
    """Like start_ticks, but None for a zombie too: it has ended, only not been reaped."""
    fields = _stat_fields(pid)
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def boot_time() -> float:
    """The boot time, in UNIX seconds, as the kernel states it (/proc/stat btime)."""
    with open("/proc/stat", "rb") as stat:
        for line in stat:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


def create_time_from_ticks(ticks: int) -> float:
    """psutil's create_time for a process that started `ticks` after boot."""
    return ticks / CLOCK_TICKS + boot_time()


def ticks_from_create_time(create_time: float) -> int:
    """The inverse of create_time_from_ticks, on this boot (and unstepped clock)."""
    return round((create_time - boot_time()) * CLOCK_TICKS)


def process_name(pid: int) -> str | None:
    """The process's name (/proc/PID/comm), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as comm:
            return comm.read().rstrip(b"\n").decode(errors="replace")
    except OSError:
        return None


def set_own_name(name: str) -> bool:
    """Rename this process (what /proc/PID/comm and ps show; 15 bytes kept); False if
    /proc would not let it. Only the process itself can do this (the kernel allows
    it within the thread group only), so no other process can fake what it says."""
    try:
        with open("/proc/self/comm", "wb", buffering=0) as comm:
            comm.write(name.encode()[:15])
    except OSError:
        return False
    return True
