"""The per-session shim: LineAssembler on its own, then the real shim process on real spools."""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor import linux, spool
from supervisor.shim.output import LineAssembler, Output
from supervisor.shim.rhythm import READ_SIZE, STREAMING_AFTER, STREAMING_GAP, STREAMING_PIPE_SIZE, PipeRhythm
from supervisor.spool import Position, Record, SpoolReader
from tests.harness import wait_for
from tests.helpers import alive, end_shim_run, py

DEADLINE = 15.0
POLL = 0.02


def chunks_bytes(chunks) -> list[bytes]:
    return [bytes(chunk) for chunk in chunks]


# -- LineAssembler ---------------------------------------------------------------------


def test_whole_lines_come_out_at_once_in_one_chunk() -> None:
    """Bytes ending in a newline come out at once, as one chunk, with nothing held back."""
    assembler = LineAssembler(spool.STDOUT, max_chunk=64)
    assert chunks_bytes(assembler.feed(b"a\nbb\n\x00\xff ccc\n", now=1.0)) == [b"a\nbb\n\x00\xff ccc\n"]
    assert assembler.deadline(0.05) is None
    assert assembler.flush() == b""


def test_many_whole_lines_are_cut_after_a_newline_into_chunks_of_at_most_max_chunk() -> None:
    """Whole lines longer together than max_chunk are cut after the last newline that fits in each chunk."""
    assembler = LineAssembler(spool.STDOUT, max_chunk=10)
    data = b"aaa\nbbb\nccc\nddd\neeeeeeeee\n"
    chunks = chunks_bytes(assembler.feed(data, now=1.0))
    assert chunks == [b"aaa\nbbb\n", b"ccc\nddd\n", b"eeeeeeeee\n"]
    assert assembler.deadline(0.05) is None


def test_a_partial_line_is_held_with_a_deadline_from_its_first_byte() -> None:
    """A partial line is held; its deadline is its first byte's arrival plus flush_interval, however much more follows."""
    assembler = LineAssembler(spool.STDOUT, max_chunk=64)
    assert assembler.feed(b"Continue? ", now=10.0) == []
    assert assembler.deadline(0.05) == pytest.approx(10.05)
    assert assembler.feed(b"[y", now=10.03) == []
    assert assembler.feed(b"/N] ", now=10.04) == []
    assert assembler.deadline(0.05) == pytest.approx(10.05)
    assert assembler.deadline(1.0) == pytest.approx(11.0)
    assert chunks_bytes(assembler.feed(b"y\n", now=10.2)) == [b"Continue? [y/N] y\n"]
    assert assembler.deadline(0.05) is None


def test_the_partial_line_after_the_last_newline_dates_from_the_read_that_brought_it() -> None:
    """Whole lines come out and the bytes after the last newline wait, dated from the read that brought them."""
    assembler = LineAssembler(spool.STDERR, max_chunk=64)
    assert assembler.feed(b"abc", now=1.0) == []
    assert chunks_bytes(assembler.feed(b"d\nline\npart", now=2.0)) == [b"abcd\nline\n"]
    assert assembler.deadline(0.1) == pytest.approx(2.1)
    assert assembler.feed(b"ial", now=2.5) == []
    assert assembler.deadline(0.1) == pytest.approx(2.1)
    assert assembler.flush() == b"partial"


def test_a_line_longer_than_max_chunk_is_split_while_the_remainder_waits() -> None:
    """A line longer than max_chunk comes out in max_chunk pieces and only the short remainder is held."""
    assembler = LineAssembler(spool.STDOUT, max_chunk=4)
    assert chunks_bytes(assembler.feed(b"abcdefghij", now=1.0)) == [b"abcd", b"efgh"]
    assert assembler.deadline(0.05) == pytest.approx(1.05)
    assert chunks_bytes(assembler.feed(b"kl", now=1.01)) == [b"ijkl"]
    assert assembler.deadline(0.05) is None
    assert chunks_bytes(assembler.feed(b"mnopq\nrs", now=1.02)) == [b"mnop", b"q\n"]
    assert assembler.flush() == b"rs"


def test_the_remainder_of_a_split_long_line_waits_from_the_read_that_brought_it() -> None:
    """What is left after cutting max_chunk pieces came in the latest read, so it waits flush_interval from then."""
    assembler = LineAssembler(spool.STDOUT, max_chunk=4)
    assert assembler.feed(b"ab", now=1.0) == []
    assert assembler.deadline(0.05) == pytest.approx(1.05)
    assert chunks_bytes(assembler.feed(b"cdefg", now=2.0)) == [b"abcd"]
    assert assembler.deadline(0.05) == pytest.approx(2.05)
    assert assembler.flush() == b"efg"


def test_a_long_line_with_a_newline_is_split_into_pieces_of_at_most_max_chunk() -> None:
    """A complete line longer than max_chunk is cut into max_chunk pieces, the newline staying with the last."""
    assembler = LineAssembler(spool.STDOUT, max_chunk=4)
    assert chunks_bytes(assembler.feed(b"ab\nlongline\n", now=1.0)) == [b"ab\n", b"long", b"line", b"\n"]
    assert assembler.deadline(0.05) is None


def test_flush_takes_the_pending_partial_line_and_leaves_nothing() -> None:
    """flush() returns the held partial line whatever its age, after which nothing is pending."""
    assembler = LineAssembler(spool.STDOUT, max_chunk=64)
    assembler.feed(b"line\nprompt> ", now=5.0)
    assert assembler.flush() == b"prompt> "
    assert assembler.deadline(0.05) is None
    assert assembler.flush() == b""
    assert assembler.feed(b"x", now=9.0) == []
    assert assembler.deadline(0.05) == pytest.approx(9.05)


def test_lines_fed_one_byte_at_a_time_come_out_one_whole_line_per_chunk() -> None:
    """Fed one byte at a time, each line shorter than max_chunk comes out whole, as one chunk."""
    data = b"first line\n\x00nul\n\xff\xfe invalid utf-8\n\n last"
    assembler = LineAssembler(spool.STDOUT, max_chunk=64)
    chunks: list[bytes] = []
    for index in range(len(data)):
        chunks.extend(chunks_bytes(assembler.feed(data[index : index + 1], now=float(index))))
    assert chunks == [b"first line\n", b"\x00nul\n", b"\xff\xfe invalid utf-8\n", b"\n"]
    assert assembler.deadline(0.5) == pytest.approx(data.rindex(b"\n") + 1 + 0.5)
    assert assembler.flush() == b" last"


@pytest.mark.parametrize("max_chunk", [1, 2, 3, 7, 16, 64, 4096])
@pytest.mark.parametrize("seed", range(5))
def test_any_split_of_the_input_comes_back_exactly_in_bounded_chunks(max_chunk: int, seed: int) -> None:
    """Whatever the reads' sizes, the chunks plus the final flush are exactly the input, each at most max_chunk
    and ending in a newline unless it is a full max_chunk piece, with less than max_chunk held."""
    rng = random.Random(seed * 1000 + max_chunk)
    data = bytearray()
    while len(data) < 20_000:
        line = rng.randbytes(rng.choice([0, 1, 5, 30, 200, 5000])).replace(b"\n", b"")
        data += line + (b"\n" if rng.random() < 0.8 else b"")
    data = bytes(data)
    assembler = LineAssembler(spool.STDOUT, max_chunk=max_chunk)
    views = []
    offset = 0
    now = 0.0
    while offset < len(data):
        size = rng.choice([1, 1, 2, 3, 17, 100, 4096, 65536])
        now += 0.001
        views.extend(assembler.feed(data[offset : offset + size], now=now))
        offset += size
        assert len(assembler.pending) < max_chunk
    # The chunks are only turned into bytes now: a later feed must not change an earlier chunk.
    chunks = chunks_bytes(views)
    tail = assembler.flush()
    assert b"".join(chunks) + tail == data
    for chunk in chunks:
        assert 0 < len(chunk) <= max_chunk
        assert chunk.endswith(b"\n") or len(chunk) == max_chunk


# -- the real shim process --------------------------------------------------------------


def test_the_shim_loads_nothing_outside_the_standard_library_and_supervisor() -> None:
    """`python -m supervisor.shim` imports only the standard library and supervisor's own modules, not even ctypes, so it starts fast."""
    probe = (
        "import runpy, sys\n"
        "before = set(sys.modules)\n"
        "sys.argv = ['shim']\n"
        "try:\n"
        "    runpy.run_module('supervisor.shim', run_name='__main__', alter_sys=True)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=DEADLINE, check=True)
    loaded = result.stdout.split()
    assert "supervisor.spool" in loaded  # the probe did run the shim's imports
    outside = [name for name in loaded if name.split(".")[0] not in sys.stdlib_module_names | {"supervisor"}]
    assert outside == []
    # ctypes and finding libc (linux.py's inotify) alone cost a shim's start ~7 ms.
    assert "ctypes" not in loaded


class ShimRun:
    """One shim process of the test's own, its session directory and what its spool holds so far."""

    def __init__(self, session_dir: Path, process: subprocess.Popen) -> None:
        self.session_dir = session_dir
        self.process = process
        self.records: list[Record] = []
        self._reader = SpoolReader(session_dir, Position(0, 0))
        self._fifo: int | None = None
        self.stderr_path: Path | None = None  # what the shim itself wrote to stderr

    def poll(self) -> list[Record]:
        """Read what the spool holds now (ROTATE records left out); return everything read so far."""
        while items := self._reader.read(1 << 20):
            self.records.extend(record for record, _ in items if record.kind != spool.ROTATE)
        return self.records

    def wait_for(self, predicate: Callable[[list[Record]], Any], what: str, timeout: float = DEADLINE) -> Any:
        return wait_for(lambda: predicate(self.poll()), what=what, timeout=timeout, interval=POLL)

    def wait_final(self, timeout: float = DEADLINE) -> list[Record]:
        """Every record up to the spool's last one (EXIT or SPAWN_FAILED)."""
        self.wait_for(
            lambda records: records and records[-1].kind in (spool.EXIT, spool.SPAWN_FAILED),
            what=f"EXIT or SPAWN_FAILED in {self.session_dir}",
            timeout=timeout,
        )
        return self.records

    def wait_output(self, kind: int, needle: bytes, timeout: float = DEADLINE) -> bytes:
        """Wait until the stream's bytes so far contain needle; return them."""
        return self.wait_for(
            lambda records: needle in (out := stream_bytes(records, kind)) and out,
            what=f"{needle!r} on {spool.STREAM_NAMES[kind]}",
            timeout=timeout,
        )

    def start_payload(self) -> dict[str, Any]:
        record = self.wait_for(lambda records: next((r for r in records if r.kind == spool.START), None), "START")
        return json.loads(record.data)

    def send(self, kind: int, data: bytes = b"") -> None:
        """Write one frame to the shim's stdin FIFO, as the daemon does."""
        self.send_raw(spool.FIFO_FRAME.pack(kind, len(data)) + data)

    def send_raw(self, data: bytes) -> None:
        if self._fifo is None:
            # O_NONBLOCK: fails (ENXIO) rather than hang if the shim does not hold the FIFO.
            self._fifo = os.open(self.session_dir / spool.STDIN_FIFO, os.O_WRONLY | os.O_NONBLOCK)
            os.set_blocking(self._fifo, True)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fifo, view) :]

    def close(self) -> None:
        self._reader.close()
        if self._fifo is not None:
            os.close(self._fifo)
            self._fifo = None


def stream_bytes(records: list[Record], kind: int) -> bytes:
    return b"".join(record.data for record in records if record.kind == kind)


def event(records: list[Record], kind: int) -> dict[str, Any]:
    matching = [record for record in records if record.kind == kind]
    assert len(matching) == 1, [record.kind for record in records]
    return json.loads(matching[0].data)


@pytest.fixture
def start_shim(tmp_path: Path) -> Iterator[Callable[..., ShimRun]]:
    """Start real shims; in teardown, end each shim and its command's group, by PID."""
    runs: list[ShimRun] = []
    extra_pids: list[tuple[int, float]] = []

    def start(
        argv: list[str],
        env_extra: dict[str, str] | None = None,
        shim_env: dict[str, str] | None = None,
        fifo: bool = True,
        **spec: Any,
    ) -> ShimRun:
        session_dir = tmp_path / f"session{len(runs)}"
        session_dir.mkdir()
        full_spec = {
            "argv": argv,
            "cwd": str(tmp_path),
            "env": env_extra or {},
            "flush_interval": 0.05,
            "max_chunk_bytes": 65536,
            "segment_bytes": 8 << 20,
            "max_segments": 64,
            "stop_timeout": 2.0,
            **spec,
        }
        (session_dir / spool.SPEC_FILE).write_text(json.dumps(full_spec))
        if fifo:
            os.mkfifo(session_dir / spool.STDIN_FIFO, 0o600)
        stderr_path = tmp_path / f"session{len(runs)}.stderr"
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "supervisor.shim", str(session_dir)],
                stdin=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, **(shim_env or {})},
            )
        run = ShimRun(session_dir, process)
        run.stderr_path = stderr_path
        runs.append(run)
        return run

    def track(pid: int) -> None:
        """Kill this pid in teardown too, if it is still the same process."""
        try:
            extra_pids.append((pid, psutil.Process(pid).create_time()))
        except psutil.NoSuchProcess:
            pass

    start.track = track  # type: ignore[attr-defined]
    yield start

    for run in runs:
        run.poll()
        # Without an EXIT the shim has not ended the command's group: end it here.
        end_shim_run(run.process, run.records)
        run.close()
    for pid, created in extra_pids:
        try:
            if psutil.Process(pid).create_time() == created:
                os.kill(pid, signal.SIGKILL)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass


def test_output_is_recorded_byte_exact_between_start_and_exit(start_shim) -> None:
    """A command's stdout and stderr bytes are spooled exactly, after START and before EXIT with its exit code."""
    out = b"out line\n\x00nul\xff\xfe invalid\n" + b"x" * 100 + b"\nno newline at end"
    err = b"err line\n\xc3(\n"
    code = (
        "import sys\n"
        f"sys.stdout.buffer.write({out!r}); sys.stdout.flush()\n"
        f"sys.stderr.buffer.write({err!r}); sys.stderr.flush()\n"
        "sys.exit(3)\n"
    )
    run = start_shim(py(code))
    records = run.wait_final()
    assert records[0].kind == spool.START
    assert records[-1].kind == spool.EXIT
    assert {r.kind for r in records[1:-1]} <= {spool.STDOUT, spool.STDERR}
    assert stream_bytes(records, spool.STDOUT) == out
    assert stream_bytes(records, spool.STDERR) == err
    start = event(records, spool.START)
    assert start["shim_pid"] == run.process.pid
    assert start["pid"] != run.process.pid
    exit_ = event(records, spool.EXIT)
    assert exit_["exit_code"] == 3
    assert exit_["signal"] is None
    assert run.process.wait(DEADLINE) == 0


def test_large_output_is_spooled_exactly_in_records_of_at_most_max_chunk_across_segments(start_shim) -> None:
    """Output far larger than max_chunk_bytes and segment_bytes is spooled byte-exact, every record at most max_chunk_bytes."""
    rng = random.Random(7)
    payload = bytearray()
    for _ in range(300):
        payload += rng.randbytes(rng.choice([10, 100, 3000, 20000])) + b"\n"
    payload += b"tail without newline"
    data = bytes(payload)
    code = "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data)"
    run = start_shim(py(code), max_chunk_bytes=4096, segment_bytes=64 * 1024, max_segments=10_000)
    run.start_payload()
    for start in range(0, len(data), 4000):  # the daemon's frames fit in PIPE_BUF
        run.send(spool.FIFO_DATA, data[start : start + 4000])
    run.send(spool.FIFO_EOF)
    records = run.wait_final()
    assert stream_bytes(records, spool.STDOUT) == data
    assert stream_bytes(records, spool.STDIN) == data
    assert max(len(r.data) for r in records if r.kind == spool.STDOUT) <= 4096
    assert len(spool.list_segments(run.session_dir)) > 1
    assert event(records, spool.EXIT)["exit_code"] == 0


def test_a_command_killed_by_a_signal_exits_with_the_signal_and_no_exit_code(start_shim) -> None:
    """A command ended by SIGKILL gives an EXIT record with signal 9 and exit_code None."""
    run = start_shim(py("import os, signal; print('bye', flush=True); os.kill(os.getpid(), signal.SIGKILL)"))
    records = run.wait_final()
    assert stream_bytes(records, spool.STDOUT) == b"bye\n"
    exit_ = event(records, spool.EXIT)
    assert exit_["signal"] == signal.SIGKILL
    assert exit_["exit_code"] is None
    assert run.process.wait(DEADLINE) == 0


@pytest.mark.parametrize("argv", [["/nonexistent/slotd-test-command"], ["slotd-test-no-such-command-on-path"]])
def test_a_missing_command_gives_spawn_failed_command_not_found(start_shim, argv: list[str]) -> None:
    """A command that does not exist gives one SPAWN_FAILED record, reason "command not found", and no START."""
    run = start_shim(argv)
    records = run.wait_final()
    assert [r.kind for r in records] == [spool.SPAWN_FAILED]
    payload = json.loads(records[0].data)
    assert payload["reason"] == "command not found"
    assert payload["detail"]
    assert abs(payload["ended_at"] - time.time()) < 60
    assert run.process.wait(DEADLINE) == 0


def test_a_missing_working_directory_gives_spawn_failed_working_directory_not_found(start_shim, tmp_path: Path) -> None:
    """A cwd that does not exist gives one SPAWN_FAILED record, reason "working directory not found"."""
    run = start_shim(py("print('never')"), cwd=str(tmp_path / "no-such-dir"))
    records = run.wait_final()
    assert [r.kind for r in records] == [spool.SPAWN_FAILED]
    assert json.loads(records[0].data)["reason"] == "working directory not found"
    assert run.process.wait(DEADLINE) == 0


def test_a_missing_input_fifo_gives_spawn_failed_and_runs_nothing(start_shim, tmp_path: Path) -> None:
    """A session directory without its stdin FIFO gives one SPAWN_FAILED record, reason "input FIFO missing", one line on stderr and no traceback; the command never runs."""
    marker = tmp_path / "ran"
    run = start_shim(py(f"open({str(marker)!r}, 'w').close()"), fifo=False)
    records = run.wait_final()
    assert [r.kind for r in records] == [spool.SPAWN_FAILED]
    assert json.loads(records[0].data)["reason"] == "input FIFO missing"
    assert run.process.wait(DEADLINE) == 0
    said = run.stderr_path.read_text()
    assert "Traceback" not in said
    assert said.startswith("shim: not starting the command: its input FIFO") and said.count("\n") == 1
    assert not marker.exists()


def test_a_line_per_write_at_full_speed_is_spooled_many_lines_to_a_record(start_shim) -> None:
    """20,000 lines written one write() each, as fast as the command can, arrive exactly, in under a fiftieth as many records."""
    lines = 20_000
    code = f"import os\nfor n in range({lines}):\n    os.write(1, b'%08d ' % n + b'x' * 90 + b'\\n')\n"
    run = start_shim(py(code), nice=10)  # niced as sessions are by default
    records = run.wait_final()
    out = stream_bytes(records, spool.STDOUT)
    assert out == b"".join(b"%08d " % n + b"x" * 90 + b"\n" for n in range(lines))
    # Without the pause between reads: 2,000 to 2,900 records here; with it, about 75.
    assert len([r for r in records if r.kind == spool.STDOUT]) < lines / 50


# Writes `lines` short lines half a millisecond apart, then `count` pieces of `size`
# bytes, one write() each, to stdout; then the size of its stdout pipe to stderr.
PIPE_SIZE_AFTER_WRITES = (
    "import fcntl, os, sys, time\n"
    "lines, count, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])\n"
    "for _ in range(lines):\n"
    "    os.write(1, b'hello\\n'); time.sleep(0.0005)\n"
    "piece = b'x' * (size - 1) + b'\\n'\n"
    "for _ in range(count):\n"
    "    os.write(1, piece)\n"
    "os.write(2, b'%d' % fcntl.fcntl(1, fcntl.F_GETPIPE_SZ))\n"
)


@pytest.mark.parametrize(
    ("lines", "count", "size", "pipe_size"),
    [
        (0, 50_000, 100, STREAMING_PIPE_SIZE),
        (0, 1_000, 65536, READ_SIZE),
        (STREAMING_AFTER - 1, 1_000, 65536, READ_SIZE),
        (100, 1_000, 65536, READ_SIZE),
    ],
    ids=["lines", "blocks", "a-few-lines-then-blocks", "streams-then-blocks"],
)
def test_a_streaming_commands_pipe_grows_and_a_block_writers_does_not(
    start_shim, lines, count, size, pipe_size
) -> None:
    """A command writing 100-byte lines at full speed finds its stdout pipe grown to 256 KiB; one writing 64 KiB blocks keeps (or gets back) the default 64 KiB, after a few short lines back to back or after streaming lines."""
    run = start_shim([*py(PIPE_SIZE_AFTER_WRITES), str(lines), str(count), str(size)], nice=10)
    records = run.wait_final()
    assert len(stream_bytes(records, spool.STDOUT)) == lines * len(b"hello\n") + count * size
    assert stream_bytes(records, spool.STDERR) == b"%d" % pipe_size


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def test_three_small_reads_back_to_back_start_streaming_and_grow_the_pipe(pipe) -> None:
    """Small reads in a row, each within STREAMING_GAP of the last, stream from the third on; the pipe grows to STREAMING_PIPE_SIZE then, and reads ask for that much."""
    read_end, _ = pipe
    rhythm = PipeRhythm(read_end)
    now = 100.0
    for _ in range(STREAMING_AFTER - 1):
        rhythm.note(300, now)
        now += STREAMING_GAP / 4
        assert not rhythm.streaming and not rhythm.pausing(now)
    rhythm.note(300, now)
    assert rhythm.streaming and rhythm.pausing(now)
    assert rhythm.size == STREAMING_PIPE_SIZE == fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ)


def test_small_reads_with_a_gap_between_or_a_big_read_between_do_not_stream(pipe) -> None:
    """A gap over STREAMING_GAP, or a read of a page or more, starts the count again: the pipe keeps 64 KiB."""
    read_end, _ = pipe
    rhythm = PipeRhythm(read_end)
    now = 100.0
    for size, later in [(300, 0.0005), (300, 3 * STREAMING_GAP), (300, 0.0005), (8192, 0.0005)] * 4:
        rhythm.note(size, now)
        now += later
        assert not rhythm.streaming
    assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) == READ_SIZE


def test_a_full_read_ends_streaming_and_shrinks_the_pipe_and_a_gap_ends_it_but_keeps_it(pipe) -> None:
    """Streaming, a pause in the writes ends it and one small read resumes it (the pipe kept); a full read (a block writer) ends it and the pipe is 64 KiB again, to grow only after small reads in a row again."""
    read_end, _ = pipe
    rhythm = PipeRhythm(read_end)
    now = 100.0
    for _ in range(STREAMING_AFTER):
        rhythm.note(300, now)
        now += 0.0005
    assert rhythm.streaming
    rhythm.note(100_000, now)  # less than the pipe holds: streams on
    assert rhythm.streaming
    now += 3 * STREAMING_GAP
    assert not rhythm.pausing(now)  # the command has gone quiet: no pause before the next read
    rhythm.note(300, now)
    assert not rhythm.streaming and rhythm.size == STREAMING_PIPE_SIZE
    rhythm.note(300, now + 0.0005)
    assert rhythm.streaming
    rhythm.note(STREAMING_PIPE_SIZE, now + 0.001)
    assert not rhythm.streaming
    assert rhythm.size == READ_SIZE == fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ)
    rhythm.note(300, now + 0.0015)
    assert not rhythm.streaming


def test_a_terminal_is_read_at_once_however_fast_it_is_written(tmp_path: Path) -> None:
    """A terminal's reads are at most a page each, so a fast writer's all look small: the shim never pauses for one (it would gather nothing)."""
    master, slave = os.openpty()
    try:
        writer = spool.SpoolWriter(tmp_path, segment_bytes=1 << 20, max_segments=4)
        output = Output(writer, 65536, 0.05, [spool.TTY])
        now = 100.0
        for _ in range(10):
            os.write(slave, b"x" * 100)
            assert output.read(spool.TTY, master, now)
            now += 0.0002
            assert not output.pausing(now)
        writer.close()
    finally:
        os.close(master)
        os.close(slave)


def test_the_command_runs_at_the_spec_nice_in_its_own_autogroup_and_the_shim_keeps_its_own(start_shim) -> None:
    """With nice 5 in the spec the command and its session's autogroup run at nice 5, the shim at its own."""
    run = start_shim(py("import time; time.sleep(600)"), nice=5)
    pid = run.start_payload()["pid"]
    assert linux.nice_value(pid) == 5
    assert linux.nice_value(run.process.pid) == linux.nice_value(os.getpid())
    if os.path.exists("/proc/self/autogroup"):
        assert linux.autogroup_nice(pid) == 5
        assert linux.autogroup_nice(run.process.pid) == linux.autogroup_nice(os.getpid())


def test_a_spec_without_nice_from_an_older_daemon_runs_the_command_at_the_shims_priority(start_shim) -> None:
    """A spec with no nice (written by an older daemon during an upgrade) still starts the command, at the shim's nice."""
    run = start_shim(py("import time; time.sleep(600)"))
    pid = run.start_payload()["pid"]
    assert linux.nice_value(pid) == linux.nice_value(run.process.pid)


def test_the_command_gets_the_shim_environment_plus_the_spec_env_in_its_cwd(start_shim, tmp_path: Path) -> None:
    """The command runs in the spec's cwd with the shim's environment, the spec's env added on top and winning."""
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    code = (
        "import json, os\n"
        "keys = ['SLOTD_SESSION_ID', 'SLOTD_SLOT', 'ADDED', 'OVERRIDDEN', 'INHERITED']\n"
        "print(json.dumps({'cwd': os.getcwd(), 'env': {k: os.environ.get(k) for k in keys}}))\n"
    )
    run = start_shim(
        py(code),
        cwd=str(workdir),
        env_extra={"SLOTD_SESSION_ID": "abc-123", "SLOTD_SLOT": "2", "ADDED": "é ü", "OVERRIDDEN": "from spec"},
        shim_env={"INHERITED": "from shim", "OVERRIDDEN": "from shim"},
    )
    records = run.wait_final()
    seen = json.loads(stream_bytes(records, spool.STDOUT))
    assert seen["cwd"] == str(workdir)
    assert seen["env"] == {
        "SLOTD_SESSION_ID": "abc-123",
        "SLOTD_SLOT": "2",
        "ADDED": "é ü",
        "OVERRIDDEN": "from spec",
        "INHERITED": "from shim",
    }
    assert event(records, spool.EXIT)["exit_code"] == 0


def test_fifo_input_reaches_the_command_stdin_and_is_recorded_as_stdin(start_shim) -> None:
    """Frames written to the FIFO, even split mid-frame, reach the command's stdin and appear as STDIN records."""
    code = (
        "import sys\n"
        "for line in sys.stdin.buffer:\n"
        "    sys.stdout.buffer.write(b'got:' + line); sys.stdout.flush()\n"
        "    if line == b'quit\\n': break\n"
    )
    run = start_shim(py(code))
    run.start_payload()
    run.send(spool.FIFO_DATA, b"hello\n")
    assert run.wait_output(spool.STDOUT, b"got:hello\n") == b"got:hello\n"
    # One frame written in two pieces, then two frames in one write.
    binary = b"\x00\xff bytes!\n"
    frame = spool.FIFO_FRAME.pack(spool.FIFO_DATA, len(binary)) + binary
    run.send_raw(frame[:3])
    run.send_raw(frame[3:])
    run.send_raw(
        spool.FIFO_FRAME.pack(spool.FIFO_DATA, 6) + b"x\ny\nz\n" + spool.FIFO_FRAME.pack(spool.FIFO_DATA, 5) + b"quit\n"
    )
    records = run.wait_final()
    inputs = [r.data for r in records if r.kind == spool.STDIN]
    assert inputs == [b"hello\n", b"\x00\xff bytes!\n", b"x\ny\nz\n", b"quit\n"]
    assert stream_bytes(records, spool.STDOUT) == b"got:hello\ngot:\x00\xff bytes!\ngot:x\ngot:y\ngot:z\ngot:quit\n"
    assert event(records, spool.EXIT)["exit_code"] == 0


def test_a_fifo_eof_frame_closes_the_command_stdin(start_shim) -> None:
    """After a FIFO_EOF frame the command reads end of file, having read every byte sent before it."""
    code = "import sys; data = sys.stdin.buffer.read(); print('read', len(data), data.count(b'\\n'), flush=True)"
    run = start_shim(py(code))
    run.start_payload()
    run.send(spool.FIFO_DATA, b"one\n")
    run.send(spool.FIFO_DATA, b"two\nthree")
    run.send(spool.FIFO_EOF)
    records = run.wait_final()
    assert stream_bytes(records, spool.STDOUT) == b"read 13 2\n"
    assert [r.data for r in records if r.kind == spool.STDIN] == [b"one\n", b"two\nthree"]
    assert event(records, spool.EXIT)["exit_code"] == 0


def test_a_prompt_without_newline_is_spooled_once_it_has_waited_flush_interval(start_shim) -> None:
    """A prompt with no newline, from a command that then waits for input, is spooled within flush_interval plus a margin."""
    flush_interval = 0.2
    code = (
        "import sys\n"
        "sys.stdin.readline()\n"
        "sys.stdout.write('Continue? [y/N] '); sys.stdout.flush()\n"
        "answer = sys.stdin.readline()\n"
        "sys.stdout.write('answer ' + answer); sys.stdout.flush()\n"
    )
    run = start_shim(py(code), flush_interval=flush_interval)
    run.start_payload()
    sent_at = time.monotonic()
    run.send(spool.FIFO_DATA, b"go\n")
    run.wait_output(spool.STDOUT, b"Continue? [y/N] ", timeout=flush_interval + 1.0)
    assert time.monotonic() - sent_at < flush_interval + 1.0
    records = run.poll()
    go = next(r for r in records if r.kind == spool.STDIN)
    prompt = next(r for r in records if r.kind == spool.STDOUT)
    assert prompt.data == b"Continue? [y/N] "
    # Held for flush_interval first: not cut the moment it was read.
    assert prompt.timestamp - go.timestamp >= flush_interval - 0.01
    run.send(spool.FIFO_DATA, b"y\n")
    records = run.wait_final()
    assert [r.data for r in records if r.kind == spool.STDOUT] == [b"Continue? [y/N] ", b"answer y\n"]


def test_a_terminal_echo_without_newline_is_spooled_as_soon_as_it_is_read(start_shim) -> None:
    """On a terminal nothing waits for a newline: a keystroke echoed back is spooled at once, not after flush_interval."""
    flush_interval = 10.0
    # Raw mode without echo, then "ready": a key typed before it would be echoed by the
    # terminal itself, then dropped by setraw's flush.
    code = (
        "import os, tty\ntty.setraw(0)\nos.write(1, b'ready')\n"
        "while (data := os.read(0, 1024)) != b'q':\n    os.write(1, data)\n"
    )
    run = start_shim(py(code), flush_interval=flush_interval, tty={"cols": 80, "rows": 24})
    run.wait_output(spool.TTY, b"ready", timeout=flush_interval / 2)
    run.send(spool.FIFO_DATA, b"x")
    run.wait_output(spool.TTY, b"readyx", timeout=flush_interval / 2)
    records = run.poll()
    typed = next(r for r in records if r.kind == spool.STDIN)
    echo = [r for r in records if r.kind == spool.TTY][-1]
    assert echo.data == b"x"
    assert echo.timestamp - typed.timestamp < flush_interval / 2
    run.send(spool.FIFO_DATA, b"q")
    run.wait_final()


@pytest.mark.parametrize("child_stdout", ["inherited", "devnull"])
def test_a_child_left_running_in_the_group_is_ended_when_the_command_exits(start_shim, child_stdout: str) -> None:
    """When the command exits leaving a child in its group (holding its pipes or not), the shim ends the child promptly and writes EXIT."""
    redirect = "" if child_stdout == "inherited" else ", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL"
    code = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']{redirect})\n"
        "print(child.pid, flush=True)\n"
        "sys.exit(4)\n"
    )
    stop_timeout = 5.0
    run = start_shim(py(code), stop_timeout=stop_timeout)
    child_pid = int(run.wait_output(spool.STDOUT, b"\n"))
    start_shim.track(child_pid)
    seen_at = time.monotonic()
    records = run.wait_final()
    # SIGTERM ends it at once: no waiting for the SIGKILL that follows stop_timeout.
    assert time.monotonic() - seen_at < stop_timeout
    assert event(records, spool.EXIT)["exit_code"] == 4
    wait_for(lambda: not alive(child_pid), what=f"child {child_pid} to be gone")
    assert run.process.wait(DEADLINE) == 0


def test_a_child_that_ignores_sigterm_and_holds_the_pipes_is_killed_after_stop_timeout(start_shim) -> None:
    """A leftover child that ignores SIGTERM and keeps stdout open is SIGKILLed after stop_timeout, and EXIT follows."""
    child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('child up', flush=True); time.sleep(120)"
    code = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
        "print('pid', child.pid, flush=True)\n"
        "sys.stdin.readline()\n"
    )
    stop_timeout = 0.5
    run = start_shim(py(code), stop_timeout=stop_timeout)
    found = run.wait_for(
        lambda records: (
            b"child up\n" in (out := stream_bytes(records, spool.STDOUT)) and re.search(rb"pid (\d+)\n", out)
        ),
        what="the child's pid and the child up",
    )
    child_pid = int(found.group(1))
    start_shim.track(child_pid)
    exited_at = time.monotonic()
    run.send(spool.FIFO_DATA, b"exit now\n")
    records = run.wait_final()
    assert event(records, spool.EXIT)["exit_code"] == 0
    assert time.monotonic() - exited_at >= stop_timeout - 0.05
    wait_for(lambda: not alive(child_pid), what=f"child {child_pid} to be gone")
    assert run.process.wait(DEADLINE) == 0


def test_sigterm_to_the_shim_is_forwarded_to_the_command_group_and_exit_is_still_written(start_shim) -> None:
    """SIGTERM sent to the shim reaches the command (and its group), and the shim still writes EXIT with signal 15."""
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print('ready', child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    run = start_shim(py(code), stop_timeout=5.0)
    out = run.wait_output(spool.STDOUT, b"\n")
    child_pid = int(out.split()[1])
    start_shim.track(child_pid)
    command_pid = run.start_payload()["pid"]
    run.process.send_signal(signal.SIGTERM)
    records = run.wait_final()
    exit_ = event(records, spool.EXIT)
    assert exit_["signal"] == signal.SIGTERM
    assert exit_["exit_code"] is None
    assert run.process.wait(DEADLINE) == 0
    assert not alive(command_pid)
    wait_for(lambda: not alive(child_pid), what=f"child {child_pid} to be gone")


def test_the_shim_exits_zero_only_after_the_exit_record_is_written(start_shim) -> None:
    """The shim exits with status 0, and by then the spool already ends with EXIT."""
    run = start_shim(py("print('done')"))
    assert run.process.wait(DEADLINE) == 0
    records = run.poll()
    assert records[-1].kind == spool.EXIT
    assert [r.kind for r in records] == [spool.START, spool.STDOUT, spool.EXIT]


def test_sigterm_right_after_start_is_forwarded_rather_than_killing_the_shim(start_shim) -> None:
    """SIGTERM sent the moment START is in the spool still ends the command and leaves an EXIT record."""
    # The spool is polled without pausing here on purpose: the signal must land as close
    # to START as possible, where the shim once had no handler yet (about 1 in 70 runs).
    for _ in range(20):
        run = start_shim(py("import time; time.sleep(120)"), stop_timeout=5.0)
        segment = spool.segment_path(run.session_dir, 0)
        deadline = time.monotonic() + DEADLINE
        while not (segment.exists() and segment.stat().st_size > 0):
            assert time.monotonic() < deadline, "timed out waiting for START"
        run.process.send_signal(signal.SIGTERM)
        assert run.process.wait(DEADLINE) == 0
        records = run.poll()
        assert [r.kind for r in records] == [spool.START, spool.EXIT]
        assert event(records, spool.EXIT)["signal"] == signal.SIGTERM
