"""A transcript as an agent reads it: text within a byte budget, cut with a marker that
says how much was left out and where to go on, so a session that printed gigabytes
never floods an agent's context.

Rows are joined as bytes and decoded as UTF-8 with replacement at the end; the daemon's
own `system` rows read as `[slotd] ...` lines, as `slotctl logs` shows them. A cut
falls at a line's end where one is near, else between two characters. The place to go
on from is `since_seq` (rows after it) and `skip_bytes` (bytes of the next row already
read), because rows hold up to 64 KiB and a budget may end inside one."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from supervisor.asyncclient import Daemon
from supervisor.model import Stream

# After a cut the rest is read only to count it, and no further than this: a page of
# a huge transcript must not cost a pass over all of it.
COUNT_LIMIT = 32 * 1024 * 1024
SYSTEM_PREFIX = b"[slotd] "


class StopReading(Exception):
    """Enough is counted: close the connection, which ends the daemon's `logs`."""


@dataclass(frozen=True)
class Excerpt:
    """What read_output returns but the session's id."""

    text: str
    status: str
    next_seq: int
    next_skip_bytes: int
    left_out_bytes: int
    left_out_at_least: bool  # counting stopped at COUNT_LIMIT: more may follow

    @property
    def cut(self) -> bool:
        return self.left_out_bytes > 0


def row_bytes(row: dict[str, Any]) -> bytes:
    data = base64.b64decode(row["data"]) if row["encoding"] == "base64" else row["data"].encode()
    return SYSTEM_PREFIX + data if row["stream"] == Stream.SYSTEM else data


def cut_point(data: bytes | bytearray, room: int) -> int:
    """Where to cut data to keep at most room bytes: after the last newline in its
    second half, else at a character boundary."""
    newline = data.rfind(b"\n", room // 2, room)
    if newline >= 0:
        return newline + 1
    end = room
    while 0 < end < len(data) and data[end] & 0xC0 == 0x80:  # inside a UTF-8 character
        end -= 1
    return end


def start_point(data: bytes | bytearray) -> int:
    """Where to begin data that lost its start: after the first newline in its first
    half, else at a character boundary (cut_point's mirror)."""
    newline = data.find(b"\n", 0, len(data) // 2)
    if newline >= 0:
        return newline + 1
    start = 0
    while start < len(data) and data[start] & 0xC0 == 0x80:
        start += 1
    return start


def decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


async def read_from(
    daemon: Daemon, session: str, since_seq: int, skip_bytes: int, stream: str | None, max_bytes: int
) -> Excerpt:
    """The transcript from after since_seq (less skip_bytes of its first row), up to
    max_bytes; what is cut off is counted and the marker says where to go on."""
    kept = bytearray()
    next_seq, next_skip, left_out = since_seq, skip_bytes, 0
    first = True
    cut = False

    def take(message: dict[str, Any]) -> None:
        nonlocal next_seq, next_skip, left_out, first, cut
        row = message["row"]
        data = row_bytes(row)
        skipped = skip_bytes if first else 0
        first = False
        data = data[skipped:]
        if cut:
            left_out += len(data)
            if left_out >= COUNT_LIMIT:
                raise StopReading
            return
        room = max_bytes - len(kept)
        if len(data) <= room:
            kept.extend(data)
            next_seq, next_skip = row["seq"], 0
            return
        piece = cut_point(data, room)
        kept.extend(data[:piece])
        left_out += len(data) - piece
        # Go on inside this row: after the one before it, skipping what was read.
        next_seq, next_skip, cut = row["seq"] - 1, skipped + piece, True

    try:
        result = await daemon.messages("logs", take, session=session, since_seq=since_seq, stream=stream)
    except StopReading:
        status = None
    else:
        status = result["status"]
        if not cut:
            next_seq = max(next_seq, result["last_seq"])
    if status is None:
        status = (await daemon.request("show", session=session))["status"]
    text = decode(kept)
    at_least = left_out >= COUNT_LIMIT
    if cut:
        text += (
            f"\n[slotd: cut at {max_bytes} bytes; {'at least ' if at_least else ''}{left_out} more bytes left out; "
            f"read_output with since_seq={next_seq} and skip_bytes={next_skip} reads on]\n"
        )
    return Excerpt(text, status, next_seq, next_skip, left_out, at_least)


async def read_tail(daemon: Daemon, session: str, tail_lines: int, stream: str | None, max_bytes: int) -> Excerpt:
    """The last tail_lines lines, of which at most the last max_bytes; the marker
    before them says how much of those lines was left out."""
    kept = bytearray()
    left_out = 0
    at_line_start = True  # whether kept begins a line (the byte before it ended one)

    def take(message: dict[str, Any]) -> None:
        nonlocal left_out, at_line_start
        kept.extend(row_bytes(message["row"]))
        if len(kept) > max_bytes:
            excess = len(kept) - max_bytes
            at_line_start = kept[excess - 1] == ord("\n")
            del kept[:excess]
            left_out += excess

    result = await daemon.messages("logs", take, session=session, tail=tail_lines, stream=stream)
    text = decode(kept)
    if left_out:
        start = 0 if at_line_start else start_point(kept)
        left_out += start
        text = (
            f"[slotd: {left_out} earlier bytes of these {tail_lines} lines left out (max_bytes={max_bytes})]\n"
            + decode(kept[start:])
        )
    return Excerpt(text, result["status"], result["last_seq"], 0, left_out, False)
