"""The spool record format, shared by the shim (writer) and ingest (reader).

Standard library only: the shim imports it and must start fast.

A session's spool is a numbered series of append-only segment files in its runtime
directory. Each record is a fixed header followed by its payload::

    kind (u8) | timestamp (f64, UNIX seconds) | length (u32) | check (u32) | payload

The check is a CRC32 of the other header fields, not of the payload. The spool lives in
the page cache and is written by one process, append-only: what can go wrong is a torn
record at its end (the shim killed mid-write), which the length framing catches, or a
header of garbage or zeros (a persistent runtime directory after a power loss), which the
check catches. A payload checksum would cost ~10 % of the capture path's CPU twice over
(shim and daemon) for no case that can happen (after a reboot a spool is never read:
its sessions are lost by the boot id).

Output records carry the exact bytes read from the command's pipes, or from its
terminal's master side for a tty session. The shim writes records in the order it read
them; a segment ends with a ROTATE record, after which the next segment holds the rest.
The last record of a spool is EXIT (or SPAWN_FAILED). The daemon deletes a segment once
every record in it is committed to the database, which keeps the spool's disk use
bounded.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Self, TypeVar

from supervisor.errors import CorruptSpool

HEADER = struct.Struct("<BdII")
_CHECKED = struct.Struct("<BdI")  # the fields the check covers

STDOUT = 1
STDERR = 2
STDIN = 3
START = 4
EXIT = 5
SPAWN_FAILED = 6
ROTATE = 7
TTY = 8  # a tty session's output: its terminal's stdout and stderr in one

STREAM_NAMES = {STDOUT: "stdout", STDERR: "stderr", STDIN: "stdin", TTY: "tty"}
# Records that only the daemon reads as events, never stored as transcript rows.
EVENT_KINDS = frozenset({START, EXIT, SPAWN_FAILED, ROTATE})
KINDS = EVENT_KINDS | frozenset(STREAM_NAMES)
# A record longer than this is corruption, not data: the shim never writes one.
MAX_PAYLOAD = 16 * 1024 * 1024

SEGMENT_PREFIX = "spool."
SPEC_FILE = "spec.json"
STDIN_FIFO = "stdin"

# Frames on the stdin FIFO, written by the daemon, read by the shim.
FIFO_FRAME = struct.Struct("<BI")
FIFO_DATA = 0
FIFO_EOF = 1
FIFO_WINSIZE = 2  # a tty session's new window size: WINSIZE_FRAME
WINSIZE_FRAME = struct.Struct("<HH")  # columns, rows

# A write that fails with one of these waits for room instead of failing: a full disk
# (or quota) is the operator's to fix, and the shim must outlive it with every byte.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
NO_SPACE_FIRST_WAIT = 0.01
NO_SPACE_MAX_WAIT = 0.5  # how late, at most, writing resumes once there is room again
# The process name (/proc/PID/comm, 15 bytes at most) a shim takes while it waits for
# disk space: the daemon reads it to say so (see Shim.on_spool_blocked).
NO_SPACE_NAME = "slotd-nospace"

T = TypeVar("T")


class Record(NamedTuple):
    kind: int
    timestamp: float
    data: bytes


class Position(NamedTuple):
    """Where ingest stands: the segment number and the byte offset within it."""

    segment: int
    offset: int


def segment_name(segment: int) -> str:
    return f"{SEGMENT_PREFIX}{segment:08d}"


def segment_path(session_dir: Path, segment: int) -> Path:
    return session_dir / segment_name(segment)


def list_segments(session_dir: Path) -> list[int]:
    """The segment numbers present in a session directory, in order."""
    numbers = []
    try:
        names = os.listdir(session_dir)
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith(SEGMENT_PREFIX):
            suffix = name[len(SEGMENT_PREFIX) :]
            if suffix.isdigit():
                numbers.append(int(suffix))
    return sorted(numbers)


def header(kind: int, timestamp: float, length: int) -> bytes:
    return HEADER.pack(kind, timestamp, length, zlib.crc32(_CHECKED.pack(kind, timestamp, length)))


def encode(kind: int, data: bytes, timestamp: float | None = None) -> bytes:
    if timestamp is None:
        timestamp = time.time()
    return header(kind, timestamp, len(data)) + data


def encode_event(kind: int, payload: dict, timestamp: float | None = None) -> bytes:
    return encode(kind, json.dumps(payload).encode(), timestamp)


def decode(buffer: bytes | memoryview, start: int = 0) -> tuple[list[Record], int]:
    """Decode every complete record in buffer from start; return them and the end offset.

    An incomplete record at the end is left for the next read: the shim may be in the
    middle of writing it, or may have died there.
    """
    records = []
    view = memoryview(buffer)
    offset = start
    end = len(view)
    while end - offset >= HEADER.size:
        kind, timestamp, length, check = HEADER.unpack_from(view, offset)
        if check != zlib.crc32(_CHECKED.pack(kind, timestamp, length)):
            raise CorruptSpool(f"header checksum mismatch at offset {offset}")
        if length > MAX_PAYLOAD or kind not in KINDS:
            raise CorruptSpool(f"bad record header at offset {offset}")
        data_start = offset + HEADER.size
        if end - data_start < length:
            break
        data = bytes(view[data_start : data_start + length])
        records.append(Record(kind, timestamp, data))
        offset = data_start + length
    return records, offset


class SpoolWriter:
    """Appends records to a session's spool, rotating segments and applying back-pressure.

    Used by the shim. When the daemon has fallen behind by max_segments segments (it is
    down, or the disk is slow), rotation waits until it catches up: only then does the
    shim stop reading the command's output, and only then does the command block. A
    segment never grows past segment_bytes (unless one record alone is larger), so the
    spool holds at most max_segments * segment_bytes.

    A full disk blocks the same way: a write that finds no space is retried, with a
    growing wait, until it goes through, and a record cut short by it is completed, never
    abandoned. on_blocked(True) is called when such a wait begins, on_blocked(False)
    when it ends. Either wait is spent in pause(seconds), time.sleep unless told
    otherwise: the shim reaps its command there, whatever the spool waits for.
    """

    def __init__(
        self,
        session_dir: Path,
        segment_bytes: int,
        max_segments: int,
        on_blocked: Callable[[bool], None] | None = None,
        pause: Callable[[float], None] = time.sleep,
    ) -> None:
        self.session_dir = session_dir
        self.segment_bytes = segment_bytes
        self.max_segments = max(2, max_segments)
        self.on_blocked = on_blocked
        self.pause = pause
        existing = list_segments(session_dir)
        self.segment = existing[-1] if existing else 0
        self._open()

    def _open(self) -> None:
        path = segment_path(self.session_dir, self.segment)
        self.fd = self._until_written(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self.fd).st_size

    def append(self, kind: int, data: bytes | memoryview, timestamp: float | None = None) -> None:
        self._make_room(HEADER.size + len(data))
        if timestamp is None:
            timestamp = time.time()
        self._write(header(kind, timestamp, len(data)), data)

    def append_event(self, kind: int, payload: dict) -> None:
        record = encode_event(kind, payload)
        self._make_room(len(record))
        self._write(record)

    def _make_room(self, length: int) -> None:
        """Rotate first if this record and the ROTATE after it would not fit the segment."""
        if self.size and self.size + length + HEADER.size > self.segment_bytes:
            self._rotate()

    def _write(self, *parts: bytes | memoryview) -> None:
        # writev: the header and the payload go out together without being joined.
        views = [memoryview(part) for part in parts]
        self.size += sum(len(view) for view in views)
        while views:
            # A short write (the disk filled up in the middle) goes on from where it
            # stopped: the record is finished once there is room, never left torn.
            written = self._until_written(os.writev, self.fd, views)
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if views and written:
                views[0] = views[0][written:]

    def _until_written(self, call: Callable[..., T], *args) -> T:
        """call(*args), retried with a growing wait for as long as the disk has no room."""
        wait = None
        try:
            while True:
                try:
                    return call(*args)
                except OSError as error:
                    if error.errno not in NO_SPACE_ERRNOS:
                        raise
                if wait is None:
                    wait = NO_SPACE_FIRST_WAIT
                    if self.on_blocked is not None:
                        self.on_blocked(True)
                self.pause(wait)
                wait = min(2 * wait, NO_SPACE_MAX_WAIT)
        finally:
            if wait is not None and self.on_blocked is not None:
                self.on_blocked(False)

    def _rotate(self) -> None:
        self._write(encode(ROTATE, b""))
        os.close(self.fd)
        while len(list_segments(self.session_dir)) >= self.max_segments:
            self.pause(0.05)
        self.segment += 1
        self._open()

    def close(self) -> None:
        os.close(self.fd)


class SpoolReader:
    """Reads records from a session's spool starting at a committed position.

    Used by ingest. read() never blocks: it returns what is complete now.
    """

    def __init__(self, session_dir: Path, position: Position) -> None:
        self.session_dir = session_dir
        self.position = position
        self._fd: int | None = None
        # The size of the record at position, once a read has seen its header but not
        # its end: the next read takes at least that much.
        self._record_size = 0

    def _ensure_open(self) -> bool:
        if self._fd is None:
            try:
                self._fd = os.open(segment_path(self.session_dir, self.position.segment), os.O_RDONLY)
            except FileNotFoundError:
                return False
        return True

    def read(self, max_bytes: int) -> list[tuple[Record, Position]]:
        """Return complete records, each with the position just after it.

        Each read starts at the position: the start of an incomplete record at the end
        of the last one is read again rather than kept and joined to what follows, so
        no byte is copied twice (a record at most, against a copy of all that follows
        it); a record longer than max_bytes is read whole once its header says how
        long it is, not a piece at a time.
        """
        out: list[tuple[Record, Position]] = []
        budget = max_bytes
        # Past the budget only while nothing is complete yet: a record longer than
        # max_bytes must still come back, or the caller would wait for a write that
        # may never come.
        while (budget > 0 or not out) and self._ensure_open():
            assert self._fd is not None
            wanted = max(budget, self._record_size, HEADER.size)
            chunk = os.pread(self._fd, wanted, self.position.offset)
            records, consumed = decode(chunk)
            offset = self.position.offset
            rotated = False
            for record in records:
                offset += HEADER.size + len(record.data)
                if record.kind == ROTATE:
                    rotated = True
                    out.append((record, Position(self.position.segment + 1, 0)))
                    break
                out.append((record, Position(self.position.segment, offset)))
            budget -= consumed
            if rotated:
                os.close(self._fd)
                self._fd = None
                self._record_size = 0
                self.position = Position(self.position.segment + 1, 0)
                continue
            self.position = Position(self.position.segment, self.position.offset + consumed)
            self._record_size = record_size(chunk, consumed)
            if len(chunk) < wanted:
                break  # the end of what the shim has written
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def record_size(buffer: bytes, start: int) -> int:
    """The size (header and payload) of the record at start, as far as buffer tells: 0
    if no byte of it is there, the header's size if the header is not all there."""
    if start >= len(buffer):
        return 0
    if len(buffer) - start < HEADER.size:
        return HEADER.size
    _kind, _timestamp, length, _check = HEADER.unpack_from(buffer, start)
    return HEADER.size + min(length, MAX_PAYLOAD)


def end_position(session_dir: Path) -> Position:
    """Where the spool ends now: its last segment and that segment's size (which may
    include a record still being written)."""
    segments = list_segments(session_dir)
    if not segments:
        return Position(0, 0)
    try:
        return Position(segments[-1], segment_path(session_dir, segments[-1]).stat().st_size)
    except FileNotFoundError:
        return Position(segments[-1], 0)


def delete_segments_before(session_dir: Path, segment: int) -> None:
    """Remove segments wholly ingested: every number below the committed one."""
    for number in list_segments(session_dir):
        if number < segment:
            try:
                segment_path(session_dir, number).unlink()
            except FileNotFoundError:
                pass
