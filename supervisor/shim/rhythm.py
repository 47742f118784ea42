"""How a command writes into one of its output pipes, as its reads show it: a line per
write() back to back (streaming), which the shim gathers by pausing between reads and
by growing the pipe, or anything else (blocks, or lines now and then), read at once.

A command that writes a line per write() as fast as it can (any line-buffered program)
would otherwise wake the shim for every line, and each read, record and transcript row
would hold one line: 13 times the time the command takes alone, where reading a pipe
into a file takes 1.4 times.

A terminal is not watched this way: a read from one returns at most a page (its input
buffer), so every read of a fast writer looks small, and pausing there gathers nothing.
"""

from __future__ import annotations

import fcntl

READ_SIZE = 65536  # what a pipe holds by default: a read takes what its pipe holds
# Reads of less than this (a page), STREAMING_AFTER in a row, each within STREAMING_GAP
# of the one before, mean the command writes small pieces back to back: streaming
# begins. A command writing blocks gives bigger reads (short of a page now and then, at
# its start or when the shim reads in the middle of a write, but not several times in
# a row). Streaming ends when the reads stop coming back to back (to begin again at the
# next small read: the command is known to write lines), or at a full read: the command
# writes faster than a pause gathers, as a block writer does, so its pipe is made small
# again, and it must show small reads in a row again to stream.
STREAMING_READ = 4096
STREAMING_GAP = 0.002
STREAMING_AFTER = 3
# A streaming command's pipe grows to this, so it gathers lines while the shim pauses
# without filling: at 64 KiB a fast writer blocked on a full pipe about once a
# millisecond. Only a streaming command's pipe grows: a bigger one lets a block writer
# run ahead of capture and take the CPU (STREAMING_PAUSE says how much).
STREAMING_PIPE_SIZE = 256 * 1024
# How long the shim's loop pauses while a command streams (see pausing), so the
# next read takes many at once: at 170 MB/s of 100-byte lines into a pipe, 170 KB,
# within what a streaming command's pipe holds (STREAMING_PIPE_SIZE), and a thousandth
# of a second is nothing to a person following the output. 0.3 ms with the default
# 64 KiB pipe blocked a full-speed writer about once a millisecond, and woke the shim
# and the daemon three times as often (bench/ingest.py --only lines: 0.74-0.83 s
# against 0.70-0.72 s for 100 MB). Every command's pipe at 1 MiB read line-by-line
# writers as fast, but let full-speed block writers run ahead and take the CPU:
# keystroke echo p99 under load went from 7-8 ms to 19-38 ms (bench/latency.py).
STREAMING_PAUSE = 0.001


class PipeRhythm:
    """One output pipe: whether its command streams, and what the pipe holds."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = READ_SIZE  # what the pipe holds: what a read asks for
        self.streaming = False
        self.small_reads = 0  # small reads in a row, each back to back with the one before
        self.last_read_at = float("-inf")

    @property
    def grown(self) -> bool:
        return self.size > READ_SIZE

    def note(self, size: int, now: float) -> None:
        """A read of `size` bytes at `now` (0: end of file)."""
        back_to_back = now - self.last_read_at < STREAMING_GAP
        self.last_read_at = now
        if size >= self.size:  # full: the command runs ahead of the pauses
            self.streaming = False
            self.small_reads = 0
            if self.grown:
                self.size = set_pipe_size(self.fd, READ_SIZE, self.size)
        elif self.streaming:
            self.streaming = back_to_back
        elif 0 < size < STREAMING_READ:
            self.small_reads = self.small_reads + 1 if back_to_back else 1
            # A pipe still grown is a known line writer's: one such read will do.
            self.streaming = self.grown or self.small_reads >= STREAMING_AFTER
            if self.streaming and not self.grown:
                self.size = set_pipe_size(self.fd, STREAMING_PIPE_SIZE, self.size)
        else:
            self.small_reads = 0

    def pausing(self, now: float) -> bool:
        """Whether the shim should pause before its next read: the command streams and
        wrote a moment ago."""
        return self.streaming and now - self.last_read_at < STREAMING_GAP


def set_pipe_size(fd: int, size: int, current: int) -> int:
    """Make the pipe at fd hold `size` bytes where the system allows it (a user past
    fs.pipe-user-pages-soft may not grow one; a pipe holding more than `size` cannot
    shrink yet); return what it holds then."""
    try:
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        return current
