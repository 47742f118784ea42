"""The session's command: started in a process group of its own, signalled, reaped.

Its start is the spool's START record (or SPAWN_FAILED saying why it could not start);
its end, once the shim has stored all it wrote, is the EXIT record. What the command
leaves running in its group is ended after it, the way systemd ends a service's
leftovers.
"""

from __future__ import annotations

import functools
import os
import resource
import signal
import subprocess
import time
from types import FrameType
from typing import Any

from supervisor import linux, spool


class Command:
    """The command a session runs, and the process group it leads."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.stop_timeout = float(spec["stop_timeout"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.early_signals: list[int] = []
        self.pidfd: int | None = None  # readable once the command has exited
        self.exited_at: float | None = None  # monotonic, once the command is reaped
        self.ended_at: float | None = None  # the same moment in UNIX seconds, for EXIT
        self.killed_group = False

    def spawn(self, writer: spool.SpoolWriter) -> bool:
        """Start the command and record START; or record SPAWN_FAILED and return False."""
        cwd = self.spec["cwd"]
        env = dict(os.environ)
        env.update(self.spec["env"])
        # Below its shim's and the daemon's priority, so they stay responsive however
        # much CPU the command takes; set in the child between setsid and exec, so
        # nothing the command starts can escape it. The shim keeps its own: its work
        # follows the command's output, and what it has not read the command cannot
        # outrun. (A spec written by an older daemon, still running while a newer slotd
        # is installed, has no nice: the command keeps its shim's priority, as it did.)
        nice = self.spec.get("nice")
        lower_priority = None if nice is None else functools.partial(linux.lower_own_priority, int(nice))
        try:
            if not os.path.isdir(cwd):
                raise MissingWorkingDirectory(cwd)
            self.proc = subprocess.Popen(
                self.spec["argv"],
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=lower_priority,
                bufsize=0,
            )
        except OSError as error:
            writer.append_event(
                spool.SPAWN_FAILED,
                {"reason": spawn_failure_reason(error), "detail": str(error), "ended_at": time.time()},
            )
            return False
        # Start ticks identify both processes for good: the daemon compares them with
        # what it finds after a restart, so a reused PID is never taken for ours.
        writer.append_event(
            spool.START,
            {
                "shim_pid": os.getpid(),
                "shim_start_ticks": linux.start_ticks(os.getpid()),
                "pid": self.proc.pid,
                "start_ticks": linux.start_ticks(self.proc.pid),
                "started_at": time.time(),
            },
        )
        return True

    def forward_signal(self, signum: int, _frame: FrameType | None) -> None:
        """A signal sent to the shim is meant for the session: pass it to the group."""
        if self.proc is None:
            # Arrived while the command is being started: pass it on once it exists.
            self.early_signals.append(signum)
            return
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def forward_early_signals(self) -> None:
        assert self.proc is not None
        for signum in self.early_signals:
            signal_group(self.proc.pid, signum)

    def open_pidfd(self) -> int:
        assert self.proc is not None
        self.pidfd = os.pidfd_open(self.proc.pid)
        return self.pidfd

    def command_exited(self) -> None:
        """Reap the command; what it left in its group is ended too, the way systemd ends
        a service's leftovers (SIGTERM now, SIGKILL after stop_timeout)."""
        assert self.proc is not None
        self.proc.wait()
        self.exited_at = time.monotonic()
        self.ended_at = time.time()
        signal_group(self.proc.pid, signal.SIGTERM)

    def kill_group_when_due(self) -> None:
        assert self.proc is not None
        if (
            self.exited_at is not None
            and not self.killed_group
            and time.monotonic() >= self.exited_at + self.stop_timeout
        ):
            signal_group(self.proc.pid, signal.SIGKILL)
            self.killed_group = True

    def group_deadline(self) -> float | None:
        """Once the command has exited: when its group is SIGKILLed, or, after that, when
        the shim stops waiting for the group's pipes to close."""
        if self.exited_at is None:
            return None
        return self.exited_at + self.stop_timeout + (1.0 if self.killed_group else 0.0)

    def end(self) -> dict[str, Any]:
        """Kill what is left of the group; the EXIT record's payload."""
        assert self.proc is not None
        signal_group(self.proc.pid, signal.SIGKILL)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        code = self.proc.returncode
        return {
            "exit_code": code if code >= 0 else None,
            "signal": -code if code < 0 else None,
            "ended_at": self.ended_at,
            "maxrss_kb": usage.ru_maxrss,
            "utime": usage.ru_utime,
            "stime": usage.ru_stime,
        }


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class MissingWorkingDirectory(OSError):
    """The session's cwd is missing or not a directory (checked before exec, to say so plainly)."""

    def __init__(self, cwd: str) -> None:
        self.not_a_directory = os.path.exists(cwd)
        super().__init__(
            f"working directory {cwd!r} {'is not a directory' if self.not_a_directory else 'does not exist'}"
        )


def spawn_failure_reason(error: OSError) -> str:
    if isinstance(error, MissingWorkingDirectory):
        return "working directory is not a directory" if error.not_a_directory else "working directory not found"
    if isinstance(error, FileNotFoundError):
        return "command not found"
    if isinstance(error, PermissionError):
        return "permission denied"
    return f"could not start: {error.strerror or error}"
