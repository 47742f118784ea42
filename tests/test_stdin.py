"""Operator input: whole frames only, even when a write is cut short."""

from __future__ import annotations

import os

import pytest
import trio

from supervisor import spool
from supervisor.stdin import InputClosed, InputWriter


def frames_in(buffer: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    frames = []
    while len(buffer) >= spool.FIFO_FRAME.size:
        kind, length = spool.FIFO_FRAME.unpack_from(buffer)
        end = spool.FIFO_FRAME.size + length
        if len(buffer) < end:
            break
        frames.append((kind, buffer[spool.FIFO_FRAME.size : end]))
        buffer = buffer[end:]
    return frames, buffer


async def test_a_write_cut_short_leaves_only_whole_frames(tmp_path):
    """When nobody reads and the write times out, the FIFO holds whole frames only, exactly the bytes reported sent."""
    fifo = tmp_path / "stdin"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # holds it open, like the shim
    try:
        writer = InputWriter(fifo)
        data = bytes(range(256)) * 2000  # 512 KB: far more than a pipe holds
        with trio.move_on_after(0.3) as scope:
            await writer.write(data, eof=True)
        assert scope.cancelled_caught
        content = b""
        while True:
            try:
                chunk = os.read(reader, 65536)
            except BlockingIOError:
                break
            content += chunk
        frames, rest = frames_in(content)
        assert rest == b""
        assert all(kind == spool.FIFO_DATA for kind, _ in frames)
        assert b"".join(payload for _, payload in frames) == data[: writer.sent]
        assert 0 < writer.sent < len(data)
    finally:
        os.close(reader)


async def test_input_to_a_fifo_nobody_reads_says_so(tmp_path, autojump_clock):
    """A FIFO whose reader is gone refuses input with InputClosed, not a hang."""
    fifo = tmp_path / "stdin"
    os.mkfifo(fifo)
    with pytest.raises(InputClosed), trio.fail_after(10):
        await InputWriter(fifo).write(b"hello", eof=False)
    with pytest.raises(InputClosed):
        await InputWriter(tmp_path / "missing").write(b"hello", eof=False)
