"""Shim: one session's event loop, over the command's pipes (or its terminal), the input
FIFO and its exit.

It runs until the command has exited and its output pipes (or its terminal) are closed
(or, if a process outside the group holds them, a second after the group is killed),
then writes EXIT.
"""

from __future__ import annotations

import os
import selectors
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Any

from supervisor import fsguard, spool
from supervisor.shim.command import Command
from supervisor.shim.output import Output
from supervisor.shim.rhythm import STREAMING_PAUSE
from supervisor.shim.spoolwait import SpoolWait
from supervisor.shim.stdin import StdinPump
from supervisor.shim.terminal import eof_character


class Shim:
    """One session's shim: its command, that command's output into the spool, and its input."""

    def __init__(self, session_dir: Path, spec: dict[str, Any], dir_fd: int) -> None:
        self.session_dir = session_dir
        self.dir_fd = dir_fd  # the checked session directory, held open
        flush_interval = float(spec["flush_interval"])
        self.command = Command(spec)
        wait = SpoolWait(self.command)
        self.writer = spool.SpoolWriter(
            session_dir,
            int(spec["segment_bytes"]),
            int(spec["max_segments"]),
            wait.on_spool_blocked,
            wait.wait_for_spool,
        )
        # A terminal merges the command's stdout and stderr into one stream.
        kinds = (spool.STDOUT, spool.STDERR) if self.command.terminal_size is None else (spool.TTY,)
        self.output = Output(self.writer, int(spec["max_chunk_bytes"]), flush_interval, kinds)
        self.selector = selectors.DefaultSelector()
        # CPython runs a signal's Python handler between bytecodes, so one that lands
        # just before select() starts to wait would run (and forward a SIGTERM) only
        # once select() returned for another reason, perhaps never. The C-level handler
        # writes the signal to this pipe, which wakes select() (set_wakeup_fd).
        self.wakeup, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
        self.selector.register(self.wakeup, selectors.EVENT_READ, "signal")

    def refuse(self, reason: str, detail: str) -> int:
        """End without starting the command: the spool says why, as for a failed spawn."""
        print(f"shim: not starting the command: {detail}", file=sys.stderr)
        self.writer.append_event(spool.SPAWN_FAILED, {"reason": reason, "detail": detail, "ended_at": time.time()})
        self.writer.close()
        return 0

    def run(self) -> int:
        # Opened read-write: the shim is then always a writer of its own FIFO, so reads
        # never see EOF when the daemon closes its end or restarts.
        try:
            fifo = fsguard.open_owned(
                spool.STDIN_FIFO, os.O_RDWR | os.O_NONBLOCK, self.dir_fd, stat.S_IFIFO, "input FIFO"
            )
        except FileNotFoundError:
            return self.refuse(
                "input FIFO missing", f"its input FIFO {self.session_dir / spool.STDIN_FIFO} does not exist"
            )
        except (OSError, fsguard.PathError) as error:
            return self.refuse("input FIFO not usable", f"its input FIFO in {self.session_dir}: {error}")
        # The handler goes in before the spawn: a SIGTERM just after START would
        # otherwise kill the shim and leave the command running without an EXIT to come.
        signal.signal(signal.SIGTERM, self.command.forward_signal)
        if not self.command.spawn(self.writer):
            self.writer.close()
            return 0
        streams, command_input = self.command.io()
        self.command.forward_early_signals()
        for pipe in (*streams, command_input):
            os.set_blocking(pipe.fileno(), False)
        for pipe, kind in streams.items():
            self.selector.register(pipe, selectors.EVENT_READ, kind)
        # On a terminal, the end of input is its EOF character, typed: closing the
        # master would hang the terminal up, and with it the command.
        eof = None if self.command.terminal is None else eof_character(command_input)
        stdin = StdinPump(self.selector, self.writer, fifo, command_input, eof)
        self.selector.register(self.command.open_pidfd(), selectors.EVENT_READ, "exit")

        self.capture(len(streams), stdin)

        self.output.flush_all()
        self.writer.append_event(spool.EXIT, self.command.end())
        self.writer.close()
        return 0

    def capture(self, open_streams: int, stdin: StdinPump) -> None:
        """Until the command has exited and its output pipes are closed: store its output,
        pass input on, reap it, and end its group after stop_timeout."""
        command = self.command
        while open_streams or command.exited_at is None:
            now = time.monotonic()
            group_deadline = command.group_deadline()
            if group_deadline is not None and now >= group_deadline:
                if command.killed_group:
                    break  # a process outside the group holds the pipes: stop here
                command.kill_group_when_due()
                continue
            events = self.selector.select(self.output.next_timeout(now, group_deadline))
            now = time.monotonic()
            for key, _mask in events:
                tag = key.data
                if tag in self.output.assemblers:
                    if not self.output.read(tag, key.fd, now):
                        self.selector.unregister(key.fileobj)
                        open_streams -= 1
                elif tag == "fifo":
                    stdin.on_fifo_readable()
                elif tag == "stdin":
                    stdin.on_stdin_writable()
                elif tag == "signal":
                    drain(self.wakeup)  # its handler has run by now, between bytecodes
                elif tag == "exit":
                    self.selector.unregister(key.fileobj)
                    if command.exited_at is None:  # else reaped while the spool waited for room
                        command.command_exited()
            self.output.flush_due(now)
            if self.output.pausing(now):
                time.sleep(STREAMING_PAUSE)


def drain(fd: int) -> None:
    """Read a non-blocking pipe empty."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
