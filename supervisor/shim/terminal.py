"""The pseudo-terminal a tty session's command runs on.

The shim holds the master side for as long as it lives; the command gets the slave as
its stdin, stdout and stderr, and as the controlling terminal of its new session, as a
program started in a terminal window does. Programs then behave as they do for a person:
line-buffered output, prompts, colours, full screens. Because the shim, not the daemon,
holds the master, the command never sees a hang-up when the daemon goes away.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import termios
from typing import IO, Any

# struct winsize: rows, columns, then two pixel sizes nobody sets.
WINSIZE = struct.Struct("HHHH")


class Terminal:
    """A pseudo-terminal of a given window size: its master, held by the shim; its slave,
    for the command (closed here once the command has it)."""

    def __init__(self, cols: int, rows: int) -> None:
        self.master, self.slave = os.openpty()
        try:
            set_window_size(self.master, cols, rows)
        except OSError:
            self.close()
            raise

    def popen_args(self) -> dict[str, Any]:
        """subprocess.Popen's stdin, stdout and stderr that put the command on this
        terminal (take_controlling_terminal must also run in the child)."""
        return {"stdin": self.slave, "stdout": self.slave, "stderr": self.slave}

    def started(self) -> tuple[IO[bytes], IO[bytes]]:
        """Once the command holds the slave: close ours, so that reading the master
        ends (EIO) when the command and its children have all closed theirs. The master
        to read output from, and a descriptor of its own to write input to (the shim's
        selector watches each for one direction)."""
        os.close(self.slave)
        output = open(self.master, "rb", buffering=0)
        return output, open(os.dup(self.master), "wb", buffering=0)

    def close(self) -> None:
        """Close both sides (the command could not be started)."""
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def set_window_size(master: int, cols: int, rows: int) -> None:
    """Set a terminal's window size; the kernel sends SIGWINCH to its foreground process
    group if the size changed, and a full-screen program redraws for it."""
    fcntl.ioctl(master, termios.TIOCSWINSZ, WINSIZE.pack(rows, cols, 0, 0))


def take_controlling_terminal() -> None:
    """In the command's process, after setsid: its stdin, the slave, becomes the
    controlling terminal of its session, so ^C, job control and /dev/tty work."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def eof_character(output: IO[bytes]) -> bytes:
    """What a person types to end a terminal's input (VEOF, Ctrl-D unless changed)."""
    return termios.tcgetattr(output.fileno())[6][termios.VEOF]


def is_hang_up(error: OSError) -> bool:
    """EIO from a terminal's master: every slave descriptor is closed, its end of file."""
    return error.errno == errno.EIO
