"""Capture: every byte a session writes reaches SQLite exactly, in order, promptly."""

from __future__ import annotations

import random
import signal
import statistics
import threading
import time

import psutil
import pytest

from tests.harness import wait_for
from tests.helpers import py


def all_rows(daemon, session_id):
    reader = daemon.reader()
    try:
        return list(reader.iter_transcript(session_id))
    finally:
        reader.close()


def test_random_bytes_come_back_identical_from_logs_raw(daemon):
    """Invalid UTF-8, NUL bytes, very long lines and a missing final newline survive byte for byte."""
    rng = random.Random(1234)
    payload = bytearray()
    for _ in range(200):
        payload += rng.randbytes(rng.randint(0, 3000))
        payload += b"\n" if rng.random() < 0.7 else b""
    payload += b"\x00\xff\xfe" + b"y" * 300_000 + b"\n"  # a line longer than max_chunk_bytes
    payload += rng.randbytes(5000).replace(b"\n", b"") + b"no final newline \xc3"
    source = daemon.root / "payload.bin"
    source.write_bytes(bytes(payload))
    code = "import sys; sys.stdout.buffer.write(open(sys.argv[1], 'rb').read())"
    session = daemon.start_session([*py(code), str(source)])
    assert daemon.wait_ended(session["id"])["status"] == "completed"

    result = daemon.cli("logs", "--raw", session["id"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == bytes(payload)
    assert max(len(row.data) for row in all_rows(daemon, session["id"])) <= 65536


def test_stdout_and_stderr_rows_keep_the_order_they_were_read_in(daemon):
    """Lines written alternately to stdout and stderr are stored in the order written, with gapless seqs."""
    code = (
        "import sys, time\n"
        "for i in range(40):\n"
        "    stream = sys.stdout if i % 2 == 0 else sys.stderr\n"
        "    stream.write(f'{i}\\n'); stream.flush(); time.sleep(0.02)\n"
    )
    session = daemon.start_session(py(code))
    assert daemon.wait_ended(session["id"])["status"] == "completed"
    rows = all_rows(daemon, session["id"])
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
    numbers = []
    for row in rows:
        if row.stream in ("stdout", "stderr"):
            for line in row.data.splitlines():
                number = int(line)
                assert row.stream == ("stdout" if number % 2 == 0 else "stderr")
                numbers.append(number)
    assert numbers == list(range(40))


def test_a_prompt_without_newline_is_readable_within_200ms(daemon):
    """A partial line (a prompt) is stored once it has waited flush_interval, well within 200 ms."""
    code = (
        "import sys, time\n"
        "for i in range(3):\n"
        "    sys.stdout.write(f'prompt {i} {time.time():.6f}? '); sys.stdout.flush()\n"
        "    time.sleep(0.6)\n"
    )
    session = daemon.start_session(py(code))
    delays = []
    reader = daemon.reader()
    try:
        for i in range(3):

            def find():
                for row in reader.rows_after(session["id"], 0, 1000):
                    if row.data.startswith(f"prompt {i} ".encode()):
                        return row
                return None

            row = wait_for(find, interval=0.005, what=f"prompt {i}")
            seen = time.time()
            written = float(row.data.split()[2].rstrip(b"?"))
            delays.append(seen - written)
    finally:
        reader.close()
    daemon.wait_ended(session["id"])
    assert statistics.median(delays) < 0.2, delays


@pytest.mark.slow
def test_a_gibibyte_without_newline_keeps_daemon_and_shim_memory_bounded(make_daemon):
    """A session writing 1 GiB with no newline keeps daemon and shim RSS under 100 MB, and every byte is stored."""
    daemon = make_daemon(retention={"max_session_bytes": 0})
    total = 1 << 30
    code = f"import sys\nblock = b'x' * (1 << 20)\nfor _ in range({total >> 20}): sys.stdout.buffer.write(block)\n"
    session = daemon.start_session(py(code))
    shim_pid = wait_for(lambda: daemon.session(session["id"])["shim_pid"], what="shim pid")
    processes = {"daemon": psutil.Process(daemon.process.pid), "shim": psutil.Process(shim_pid)}
    peaks = {name: 0 for name in processes}
    done = threading.Event()

    def sample():
        while not done.is_set():
            for name, process in processes.items():
                try:
                    peaks[name] = max(peaks[name], process.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        ended = daemon.wait_ended(session["id"], timeout=240)
    finally:
        done.set()
        sampler.join()
    assert ended["status"] == "completed"
    stats = daemon.request("show", session=session["id"])["transcript"]
    reader = daemon.reader()
    try:
        stored = reader.db.execute(
            "SELECT sum(length(data)) FROM transcript WHERE session_id = ? AND stream = 'stdout'", (session["id"],)
        ).get
    finally:
        reader.close()
    assert stored == total
    assert stats["rows"] > 0
    assert peaks["daemon"] < 100 * 1024 * 1024, peaks
    assert peaks["shim"] < 100 * 1024 * 1024, peaks


def test_a_session_runs_ahead_of_a_frozen_daemon_by_at_most_spool_max_bytes(make_daemon):
    """While the daemon is frozen, a session's spool never holds more than spool_max_bytes (here below the default segment size); once it thaws, every byte is stored."""
    spool_max = 1 << 20
    daemon = make_daemon(spool_max_bytes=spool_max)
    gate, finished = daemon.root / "gate", daemon.root / "finished"
    lines = 6000  # 6 MB: more than the spool may hold
    code = (
        "import os, sys, time\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
        f"for i in range({lines}): sys.stdout.write(f'{{i:08d}}' + 'x' * 991 + '\\n')\n"
        f"sys.stdout.flush(); open({str(finished)!r}, 'w').close()\n"
    )
    session = daemon.start_session(py(code))
    pid = wait_for(lambda: daemon.session(session["id"])["pid"], what="the command started")
    spool_dir = daemon.root / "run" / "sessions" / session["id"]

    def spool_bytes() -> int:
        total = 0
        for entry in spool_dir.iterdir():
            if entry.name.startswith("spool."):
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:
                    pass
        return total

    peak = 0
    last_seen = -1

    def finished_or_blocked() -> bool:
        """The command finished, or it waits to write while the spool stands still."""
        nonlocal peak, last_seen
        size = spool_bytes()
        peak = max(peak, size)
        if finished.exists():
            return True
        with open(f"/proc/{pid}/wchan") as wchan:
            writing = "pipe_write" in wchan.read()
        standing, last_seen = size == last_seen, size
        return writing and standing

    daemon.process.send_signal(signal.SIGSTOP)
    try:
        gate.touch()
        wait_for(finished_or_blocked, interval=0.05, what="the command to finish or block")
        assert peak <= spool_max, f"the spool held {peak} bytes"
        assert not finished.exists()
    finally:
        daemon.process.send_signal(signal.SIGCONT)
    assert daemon.wait_ended(session["id"], timeout=60)["status"] == "completed"
    assert daemon.stdout_bytes(session["id"]) == b"".join(
        f"{i:08d}".encode() + b"x" * 991 + b"\n" for i in range(lines)
    )
