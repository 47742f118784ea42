"""The pump from the daemon's input FIFO to the command's stdin.

The daemon writes frames (see spool.FIFO_FRAME; supervisor/stdin.py is its side); the
shim records each frame's data in the spool as STDIN and passes it on to the command
without ever blocking on it: what the command has not read yet waits here, and past
STDIN_BUFFER_LIMIT the shim stops reading the FIFO, so the daemon's writes wait instead.
A tty session's input goes to its terminal's master side, as if typed: the terminal
echoes it and edits lines as for a person. Its window size comes the same way, in a
frame of its own, so that it reaches the terminal in order with the keys typed around it.
"""

from __future__ import annotations

import os
import selectors
import sys
from typing import IO

from supervisor import spool
from supervisor.shim.rhythm import READ_SIZE
from supervisor.shim.terminal import set_window_size

# Stop reading operator input while this much is waiting for the command to read it.
STDIN_BUFFER_LIMIT = 1 << 20
# The daemon writes frames of at most PIPE_BUF bytes; a frame claiming more than this is
# not its, and waiting for it would grow the buffer without bound.
MAX_INPUT_FRAME = STDIN_BUFFER_LIMIT


class StdinPump:
    """Carries input frames from the FIFO (selector tag "fifo") to the command's stdin
    (tag "stdin", watched only while input waits for the command to read it)."""

    def __init__(
        self,
        selector: selectors.BaseSelector,
        writer: spool.SpoolWriter,
        fifo: int,
        stdin: IO[bytes] | None,
        eof: bytes | None = None,
    ) -> None:
        self.selector = selector
        self.writer = writer
        self.fifo = fifo
        self.stdin = stdin  # None once closed
        # A terminal's EOF character: on a terminal the end of input is typed (and the
        # terminal stays open), not a pipe closed.
        self.eof = eof
        self.stdin_buffer = bytearray()
        self.stdin_eof_requested = False
        self.fifo_buffer = bytearray()
        selector.register(fifo, selectors.EVENT_READ, "fifo")

    def on_fifo_readable(self) -> None:
        self.read_fifo()
        if len(self.stdin_buffer) > STDIN_BUFFER_LIMIT:
            self.selector.unregister(self.fifo)

    def on_stdin_writable(self) -> None:
        self.write_stdin()
        if len(self.stdin_buffer) <= STDIN_BUFFER_LIMIT and not self._is_registered(self.fifo):
            self.selector.register(self.fifo, selectors.EVENT_READ, "fifo")

    def read_fifo(self) -> None:
        try:
            data = os.read(self.fifo, READ_SIZE)
        except BlockingIOError:
            return
        self.fifo_buffer += data
        while len(self.fifo_buffer) >= spool.FIFO_FRAME.size:
            kind, length = spool.FIFO_FRAME.unpack_from(self.fifo_buffer)
            if length > MAX_INPUT_FRAME:
                print(f"shim: input frame of {length} bytes is not the daemon's; dropping input", file=sys.stderr)
                self.fifo_buffer.clear()
                break
            end = spool.FIFO_FRAME.size + length
            if len(self.fifo_buffer) < end:
                break
            payload = bytes(self.fifo_buffer[spool.FIFO_FRAME.size : end])
            del self.fifo_buffer[:end]
            if kind == spool.FIFO_EOF and self.eof is not None:
                kind, payload = spool.FIFO_DATA, self.eof
            if kind == spool.FIFO_DATA:
                self.writer.append(spool.STDIN, payload)
                if self.stdin is not None:
                    self.stdin_buffer += payload
            elif kind == spool.FIFO_EOF:
                self.stdin_eof_requested = True
            elif kind == spool.FIFO_WINSIZE:
                self.resize_terminal(payload)
            else:
                # Not the daemon's framing: the rest cannot be trusted to line up.
                print(f"shim: unknown input frame kind {kind}; dropping {len(self.fifo_buffer)} bytes", file=sys.stderr)
                self.fifo_buffer.clear()
        self.write_stdin()

    def resize_terminal(self, payload: bytes) -> None:
        """A tty session's new window size, set on the master (stdin is a descriptor of
        its own on it, open for as long as the terminal is)."""
        if self.eof is None or self.stdin is None or len(payload) != spool.WINSIZE_FRAME.size:
            print(f"shim: window size frame of {len(payload)} bytes, no terminal to size; dropped", file=sys.stderr)
            return
        cols, rows = spool.WINSIZE_FRAME.unpack(payload)
        if cols and rows:  # a window of no size is no window to draw in
            try:
                set_window_size(self.stdin.fileno(), cols, rows)
            except OSError as error:
                print(f"shim: could not set the window size to {cols}x{rows}: {error}", file=sys.stderr)

    def write_stdin(self) -> None:
        stdin = self.stdin
        if stdin is None:
            self.stdin_buffer.clear()
            return
        try:
            while self.stdin_buffer:
                written = os.write(stdin.fileno(), self.stdin_buffer)
                del self.stdin_buffer[:written]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            # The command closed its stdin: what it will never read is dropped.
            self.stdin_buffer.clear()
            self.close_stdin()
            return
        if self.stdin_eof_requested and not self.stdin_buffer:
            self.close_stdin()
            return
        self._watch_stdin_writable(bool(self.stdin_buffer))

    def _watch_stdin_writable(self, want: bool) -> None:
        stdin = self.stdin
        if stdin is None:
            return
        registered = self._is_registered(stdin)
        if want and not registered:
            self.selector.register(stdin, selectors.EVENT_WRITE, "stdin")
        elif not want and registered:
            self.selector.unregister(stdin)

    def _is_registered(self, fileobj: int | IO[bytes]) -> bool:
        try:
            self.selector.get_key(fileobj)
            return True
        except KeyError:
            return False

    def close_stdin(self) -> None:
        if self.stdin is not None:
            if self._is_registered(self.stdin):
                self.selector.unregister(self.stdin)
            try:
                self.stdin.close()
            except BrokenPipeError:
                pass
            self.stdin = None
