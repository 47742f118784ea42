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
from collections.abc import Callable
from types import FrameType
from typing import IO, Any

from supervisor import linux, spool
from supervisor.shim.terminal import Terminal, take_controlling_terminal


def run_each(steps: list[Callable[[], None]]) -> None:
    """The steps the command's process takes before exec, in order."""
    for step in steps:
        step()


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
        tty = spec.get("tty")  # a session without a terminal may leave it out
        self.terminal_size: tuple[int, int] | None = (int(tty["cols"]), int(tty["rows"])) if tty else None
        self.terminal: Terminal | None = None  # a tty session's, once opened

    def stdio_args(self) -> dict[str, Any]:
        """Popen's arguments for the command's stdin, stdout and stderr: three pipes, or
        a tty session's terminal (opened here: a host out of ptys is a failed spawn)."""
        if self.terminal_size is None:
            return {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        self.terminal = Terminal(*self.terminal_size)
        return self.terminal.popen_args()

    def spawn(self, writer: spool.SpoolWriter) -> bool:
        """Start the command and record START; or record SPAWN_FAILED and return False."""
        cwd = self.spec["cwd"]
        env = dict(os.environ)
        for name in self.spec.get("env_unset", ()):  # a spec from an older daemon has none
            env.pop(name, None)
        env.update(self.spec["env"])
        # Below its shim's and the daemon's priority, so they stay responsive however
        # much CPU the command takes; set in the child between setsid and exec, so
        # nothing the command starts can escape it. The shim keeps its own: its work
        # follows the command's output, and what it has not read the command cannot
        # outrun. (A spec written by an older daemon, still running while a newer slotd
        # is installed, has no nice: the command keeps its shim's priority, as it did.)
        nice = self.spec.get("nice")
        in_the_child: list[Callable[[], None]] = []
        if self.terminal_size is not None:
            in_the_child.append(take_controlling_terminal)
        if nice is not None:
            in_the_child.append(functools.partial(linux.lower_own_priority, int(nice)))
        try:
            if not os.path.isdir(cwd):
                raise MissingWorkingDirectory(cwd)
            self.proc = subprocess.Popen(
                self.spec["argv"],
                cwd=cwd,
                env=env,
                **self.stdio_args(),
                start_new_session=True,
                # Run by the child after start_new_session's setsid, before exec.
                preexec_fn=functools.partial(run_each, in_the_child) if in_the_child else None,
                bufsize=0,
            )
        # SubprocessError: taking the terminal failed in the child (preexec_fn).
        except (OSError, subprocess.SubprocessError) as error:
            if self.terminal is not None:
                self.terminal.close()
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

    def io(self) -> tuple[dict[IO[bytes], int], IO[bytes]]:
        """Once spawned: what the shim reads the command's output from, each with its
        record kind, and what it writes the command's input to."""
        proc = self.proc
        assert proc is not None
        if self.terminal is None:
            assert proc.stdin and proc.stdout and proc.stderr
            return {proc.stdout: spool.STDOUT, proc.stderr: spool.STDERR}, proc.stdin
        output, input_ = self.terminal.started()
        return {output: spool.TTY}, input_

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
        """Reap the command; what it left in its session is ended too, the way systemd
        ends a service's leftovers (SIGTERM now, SIGKILL after stop_timeout)."""
        assert self.proc is not None
        self.proc.wait()
        self.exited_at = time.monotonic()
        self.ended_at = time.time()
        signal_session(self.proc.pid, signal.SIGTERM)

    def kill_group_when_due(self) -> None:
        assert self.proc is not None
        if (
            self.exited_at is not None
            and not self.killed_group
            and time.monotonic() >= self.exited_at + self.stop_timeout
        ):
            signal_session(self.proc.pid, signal.SIGKILL)
            self.killed_group = True

    def group_deadline(self) -> float | None:
        """Once the command has exited: when its group is SIGKILLed, or, after that, when
        the shim stops waiting for the group's pipes to close."""
        if self.exited_at is None:
            return None
        return self.exited_at + self.stop_timeout + (1.0 if self.killed_group else 0.0)

    def end(self) -> dict[str, Any]:
        """Kill what is left of the session; the EXIT record's payload."""
        assert self.proc is not None
        signal_session(self.proc.pid, signal.SIGKILL)
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


def signal_session(sid: int, signum: int) -> None:
    """Signal every process group of the command's session (it leads one: setsid). A
    shell with job control, as on a terminal, puts each job in a group of its own: a
    signal to the command's group alone would leave those running, as root, unseen."""
    for pgid in linux.session_groups(sid) | {sid}:
        signal_group(pgid, signum)


class MissingWorkingDirectory(OSError):
    """The session's cwd is missing or not a directory (checked before exec, to say so plainly)."""

    def __init__(self, cwd: str) -> None:
        self.not_a_directory = os.path.exists(cwd)
        super().__init__(
            f"working directory {cwd!r} {'is not a directory' if self.not_a_directory else 'does not exist'}"
        )


def spawn_failure_reason(error: OSError | subprocess.SubprocessError) -> str:
    if isinstance(error, MissingWorkingDirectory):
        return "working directory is not a directory" if error.not_a_directory else "working directory not found"
    if isinstance(error, FileNotFoundError):
        return "command not found"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, OSError) and error.strerror:
        return f"could not start: {error.strerror}"
    return f"could not start: {error}"
