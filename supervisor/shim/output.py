"""The command's stdout and stderr (or its terminal), read as they come and stored as
records of whole lines.

Records go to the spool in the order the shim read them, across both streams; a
partial line waits for its newline at most flush_interval seconds. A terminal's output
is stored as it is read, partial lines and all: an echoed keystroke, a prompt or a
screen update is what the program means to show now, and must not wait.

A command that writes a line per write() as fast as it can is read in batches (see
rhythm.py): its pipe grows and the shim's loop pauses a moment before each read, so one
read, record and row holds many lines. A line written after a quiet spell is read at
once, and so is a command writing blocks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from supervisor import spool
from supervisor.shim.rhythm import READ_SIZE, PipeRhythm
from supervisor.shim.terminal import is_hang_up


class LineAssembler:
    """Cuts one stream into records of whole lines, at most max_chunk bytes each; with
    hold_partial False, into records of what was read (cut after a newline where a
    record must be cut), holding nothing back."""

    def __init__(self, kind: int, max_chunk: int, hold_partial: bool = True) -> None:
        self.kind = kind
        self.max_chunk = max_chunk
        self.hold_partial = hold_partial
        self.pending = bytearray()
        self.pending_since: float | None = None

    def feed(self, data: bytes, now: float) -> list[memoryview]:
        """Add data; return the chunks ready to store now.

        Chunks are views of the data read, not copies: at full speed every copy of a
        64 KiB read shows in the shim's CPU time.
        """
        if not self.hold_partial:
            return self._split_lines(data, memoryview(data), len(data))
        pending_since = self.pending_since
        if self.pending:
            self.pending += data
            data = bytes(self.pending)
        view = memoryview(data)
        chunks: list[memoryview] = []
        last_newline = data.rfind(b"\n")
        if last_newline >= 0:
            chunks.extend(self._split_lines(data, view, last_newline + 1))
            rest = view[last_newline + 1 :]
            pending_since = now
        else:
            rest = view
            pending_since = pending_since if pending_since is not None else now
        # A line longer than max_chunk is split: memory stays bounded without a newline.
        while len(rest) >= self.max_chunk:
            chunks.append(rest[: self.max_chunk])
            rest = rest[self.max_chunk :]
            # What is left came in this read (less than max_chunk was held before it).
            pending_since = now
        self.pending = bytearray(rest)
        self.pending_since = pending_since if rest else None
        return chunks

    def _split_lines(self, data: bytes, view: memoryview, end: int) -> list[memoryview]:
        """Split data[:end] into chunks of at most max_chunk, cutting after a newline when one fits."""
        chunks = []
        start = 0
        while end - start > self.max_chunk:
            cut = data.rfind(b"\n", start, start + self.max_chunk)
            stop = cut + 1 if cut >= 0 else start + self.max_chunk
            chunks.append(view[start:stop])
            start = stop
        chunks.append(view[start:end])
        return chunks

    def flush(self) -> bytes:
        """Take the partial line, whatever its age."""
        data = bytes(self.pending)
        self.pending.clear()
        self.pending_since = None
        return data

    def deadline(self, flush_interval: float) -> float | None:
        if self.pending_since is None:
            return None
        return self.pending_since + flush_interval


class Output:
    """The command's output streams (stdout and stderr, or its terminal), each cut into
    records, written in the order read."""

    def __init__(self, writer: spool.SpoolWriter, max_chunk: int, flush_interval: float, kinds: Sequence[int]) -> None:
        self.writer = writer
        self.flush_interval = flush_interval
        self.assemblers = {kind: LineAssembler(kind, max_chunk, hold_partial=kind != spool.TTY) for kind in kinds}
        # A pipe's fd -> how its command writes (a terminal has none: see rhythm.py)
        self.rhythms: dict[int, PipeRhythm] = {}

    def read(self, kind: int, fd: int, now: float) -> bool:
        """Read what the stream's pipe holds and store its whole lines; at end of file
        store its partial line too and return False."""
        rhythm = self._rhythm(kind, fd)
        try:
            data = os.read(fd, rhythm.size if rhythm is not None else READ_SIZE)
        except BlockingIOError:
            return True
        except OSError as error:
            if not is_hang_up(error):
                raise
            data = b""  # a terminal's end of file
        if rhythm is not None:
            rhythm.note(len(data), now)
        assembler = self.assemblers[kind]
        if data:
            self.emit(kind, assembler.feed(data, now))
            return True
        self.emit(kind, [c for c in [assembler.flush()] if c])
        return False

    def _rhythm(self, kind: int, fd: int) -> PipeRhythm | None:
        if kind == spool.TTY:
            return None
        rhythm = self.rhythms.get(fd)
        if rhythm is None:
            rhythm = self.rhythms[fd] = PipeRhythm(fd)
        return rhythm

    def pausing(self, now: float) -> bool:
        """Whether the loop should pause before its next read (a command streams)."""
        return any(rhythm.pausing(now) for rhythm in self.rhythms.values())

    def emit(self, kind: int, chunks: Sequence[bytes | memoryview]) -> None:
        if not chunks:
            return
        # Bytes read earlier on the other stream go first, even as a partial line, so
        # the spool keeps the order the shim read them in.
        for other_kind, other in self.assemblers.items():
            if other_kind != kind and other.pending:
                self.writer.append(other_kind, other.flush())
        for chunk in chunks:
            self.writer.append(kind, chunk)

    def flush_due(self, now: float) -> None:
        for kind, assembler in self.assemblers.items():
            deadline = assembler.deadline(self.flush_interval)
            if deadline is not None and deadline <= now:
                self.writer.append(kind, assembler.flush())

    def flush_all(self) -> None:
        """Store every partial line, whatever its age (the streams have ended)."""
        for kind, assembler in self.assemblers.items():
            self.emit(kind, [c for c in [assembler.flush()] if c])

    def next_timeout(self, now: float, extra: float | None) -> float | None:
        deadlines = [d for a in self.assemblers.values() if (d := a.deadline(self.flush_interval)) is not None]
        if extra is not None:
            deadlines.append(extra)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)
