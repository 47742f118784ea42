"""The Linux primitives slotd stands on, in one place; standard library only (the shim
uses it too).

- /proc: process identity and names. A PID names a process only until it is reused;
  (PID, start time) names it for good. The start time is field 22 of /proc/PID/stat, in
  clock ticks since boot. Unlike a create time in UNIX seconds (psutil's, which adds the
  boot time), it does not move when the clock is stepped (NTP's first sync, a VM
  resumed), so it is what identity compares.
- the boot id: a new one each boot, so a recorded PID from before a reboot is no one's.
- CPU priority: a session's nice value, set both where the kernel's scheduler
  autogroups weigh it and where plain process nice does; a background thread's own
  nice and scheduling policy.
- pidfd: a descriptor that becomes readable when a process exits, for any process,
  not only our children.
- inotify (through ctypes): idle spools cost no polling at all.
- SO_PEERCRED: who is at the other end of a Unix socket, as the kernel saw it connect.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import ctypes

# -- /proc ------------------------------------------------------------------------------

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


def session_groups(sid: int) -> set[int]:
    """The process groups of every process in session sid: its leader's, and those a
    shell's job control (or any setpgid) made within it."""
    groups = set()
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat_fields(int(name))) and int(fields[3]) == sid:
            groups.add(int(fields[2]))
    return groups


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


# -- the boot id ------------------------------------------------------------------------


def current_boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


# -- CPU priority -----------------------------------------------------------------------

# Without CAP_SYS_ADMIN the kernel takes one autogroup change per 100 ms, machine-wide
# (EAGAIN meanwhile): this is how long a session's command keeps asking before its exec.
AUTOGROUP_RETRY_SECONDS = 0.3


def lower_own_priority(nice: int) -> None:
    """Run this process, which has just become a session's leader (setsid) and is about
    to exec its command, at `nice`; what it starts later inherits it.

    Two settings, because which one the scheduler weighs depends on the machine: with
    autogroups (CONFIG_SCHED_AUTOGROUP, kernel.sched_autogroup_enabled) and the process
    in the root cpu cgroup, every session (setsid) is a scheduling group of its own,
    weighed against the daemon's by the autogroup's nice (/proc/PID/autogroup), and a
    process's own nice only counts within its group. Without autogroups, or inside a
    cgroup of its own (a systemd unit), the process's own nice is what counts. Both are
    set, so the command runs at `nice` either way. What the kernel refuses (a nice below
    the current one without the privilege, no autogroups at all) is left as it was: the
    command then keeps the daemon's priority.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        pass
    deadline = time.monotonic() + AUTOGROUP_RETRY_SECONDS
    while True:
        try:
            with open("/proc/self/autogroup", "w") as autogroup:
                autogroup.write(str(nice))
            return
        except OSError as error:
            if error.errno != errno.EAGAIN or time.monotonic() > deadline:
                return
        time.sleep(0.02)


def nice_value(pid: int) -> int | None:
    """The process's nice value (field 19 of /proc/PID/stat), or None if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[16]) if fields else None


def autogroup_nice(pid: int) -> int | None:
    """The nice value of the process's autogroup, or None without autogroups (or process)."""
    try:
        with open(f"/proc/{pid}/autogroup", "rb") as autogroup:
            # "/autogroup-42 nice 10"
            return int(autogroup.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def name_thread(name: str) -> None:
    """Name the calling thread, as top -H and /proc/PID/task/TID/comm show it (15
    characters at most)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:
        pass


def raise_thread_nice(by: int) -> None:
    """Make the calling thread's nice `by` higher than it is (at most 19). On Linux a nice
    value is a thread's own. Raising one's own needs no privilege; a refusal leaves it."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except OSError:
        pass


CAP_SYS_NICE = 23


def can_leave_idle_policy() -> bool:
    """Whether the calling thread, once SCHED_IDLE, could go back to SCHED_OTHER at its
    nice value: the kernel lets it with CAP_SYS_NICE, or when RLIMIT_NICE allows that nice
    (sched(7)); else SCHED_IDLE would be for good."""
    import resource

    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"CapEff:") and int(line.split()[1], 16) >> CAP_SYS_NICE & 1:
                    return True
    except (OSError, ValueError):
        pass
    nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    return resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20 - nice


def set_idle_policy(idle: bool) -> bool:
    """Schedule the calling thread as SCHED_IDLE, or (idle False) as SCHED_OTHER at its
    nice value again; True if the kernel took it.

    A SCHED_IDLE thread weighs almost nothing against the other threads of its
    scheduling group, and any of them that wakes on its core preempts it at once, where
    a niced thread may first finish its slice. It may starve where busy processes share
    that group (no autogroups, one cgroup for everything): whoever uses it must watch
    for that.
    """
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    try:
        os.sched_setscheduler(threading.get_native_id(), policy, os.sched_param(0))
    except OSError:
        return False
    return True


# -- pidfd ------------------------------------------------------------------------------


def pidfd_open(pid: int) -> int | None:
    """A pidfd for the process, readable once it has exited; None if it is gone."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


# -- inotify ----------------------------------------------------------------------------

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc, loaded at the first watch: importing ctypes and finding libc would cost
    every session's shim, which imports this module and never watches, ~7 ms at start."""
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class DirectoryWatch:
    """A readable file descriptor whenever a file in the directory is created or written."""

    def __init__(self, directory: Path) -> None:
        from ctypes import get_errno

        libc = _libc()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            error = get_errno()
            raise OSError(error, f"inotify_init1: {os.strerror(error)}")
        self.fd = fd
        mask = IN_MODIFY | IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_TO
        if libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
            error = get_errno()
            os.close(fd)
            raise OSError(error, f"inotify_add_watch {directory}: {os.strerror(error)}")

    def drain(self) -> None:
        """Forget the events seen so far; the caller is about to look at the files."""
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)


# -- SO_PEERCRED ------------------------------------------------------------------------

_UCRED = struct.Struct("3i")


class _Socket(Protocol):
    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes: ...


def peer_credentials(sock: _Socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel saw it connect."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid
