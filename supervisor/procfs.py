"""Process identity from /proc, standard library only (the shim uses it too).

A PID names a process only until it is reused; (PID, start time) names it for good.
The start time is field 22 of /proc/PID/stat, in clock ticks since boot: the same
number psutil turns into create_time, so both sides of a restart agree on it.
"""

from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            content = stat.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = content[content.rindex(b")") + 2 :].split()
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
