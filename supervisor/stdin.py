"""Operator input to a session: framed writes to its shim's stdin FIFO (data, the end
of input, and a tty session's window size).

Every frame (header and payload) is at most PIPE_BUF bytes and goes out in one
non-blocking write, which a pipe performs whole or not at all. So a write cut short by
a timeout, a cancelled request or a daemon crash can only stop *between* frames: the
shim never sees half a frame, and the stream of input stays in step.
"""

from __future__ import annotations

import errno
import os
import select
from pathlib import Path

import trio

from supervisor import spool
from supervisor.errors import InputClosed

FRAME_PAYLOAD = select.PIPE_BUF - spool.FIFO_FRAME.size


async def _open(path: Path) -> int:
    # The shim holds its FIFO open for reading, so this open does not block; ENXIO
    # means the shim has not opened it yet (it is starting): try again shortly.
    for _attempt in range(100):
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InputClosed("the session's input FIFO is gone") from None
        except OSError as error:
            if error.errno != errno.ENXIO:
                raise
            await trio.sleep(0.02)
    raise InputClosed("the session's shim is not reading its input FIFO")


async def _write_frame(fd: int, frame: bytes) -> None:
    while True:
        try:
            os.write(fd, frame)  # <= PIPE_BUF: all of it, or EAGAIN and nothing
            return
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
        except BrokenPipeError:
            raise InputClosed("the session's shim stopped reading its input") from None


class InputWriter:
    """Writes data (and an optional end of input) as whole frames; counts what went."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sent = 0

    async def write(self, data: bytes, eof: bool) -> None:
        fd = await _open(self.path)
        try:
            for start in range(0, len(data), FRAME_PAYLOAD):
                chunk = data[start : start + FRAME_PAYLOAD]
                await _write_frame(fd, spool.FIFO_FRAME.pack(spool.FIFO_DATA, len(chunk)) + chunk)
                self.sent += len(chunk)
            if eof:
                await _write_frame(fd, spool.FIFO_FRAME.pack(spool.FIFO_EOF, 0))
        finally:
            _close(fd)

    async def resize(self, cols: int, rows: int) -> None:
        """Give a tty session's terminal a new window size."""
        fd = await _open(self.path)
        try:
            size = spool.WINSIZE_FRAME.pack(cols, rows)
            await _write_frame(fd, spool.FIFO_FRAME.pack(spool.FIFO_WINSIZE, len(size)) + size)
        finally:
            _close(fd)


def _close(fd: int) -> None:
    trio.lowlevel.notify_closing(fd)
    os.close(fd)
