"""The ingest benchmark (SPEC §8, first bullet): slotd against limits measured in the same run.

    .venv/bin/python bench/ingest.py                 # 3 sessions x 1,000,000 lines of 100 bytes
    .venv/bin/python bench/ingest.py --lines 100000  # a quick run
    .venv/bin/python bench/ingest.py --json out.json # the numbers as JSON too
    .venv/bin/python bench/ingest.py --only lines    # only the line-by-line writes (issue 14)
    .venv/bin/python bench/ingest.py --only lines --line-writer print  # and one child of two
    .venv/bin/python bench/ingest.py --session-nice 0  # sessions as urgent as the daemon

It measures, on the same data (numbered lines of exactly 100 bytes):

1. raw APSW batched inserts, the upper limit: rows of whole lines up to 64 KiB, about
   1000 rows per transaction, into slotd's own schema with slotd's own pragmas; twice:
   inserting rows built beforehand (insert only), and producing the lines in the timed
   run with the sessions' own generator (like for like with slotd, whose time includes
   its sessions producing their output; SPEC §8's "about 2M lines/s" matches this one);
2. one transaction per line (on a sample: it is slow), the approach slotd must beat 20x;
3. slotd itself: a real daemon with 3 sessions started at once, timed from the first
   start request until all three are completed, with the peak RSS of the daemon and of
   each shim sampled every 50 ms; afterwards every session's stdout in the database is
   checked to be exactly the bytes written, with sequence numbers 1..N without a gap.

4. line by line (issue 14): the same lines written one write() each, as a line-buffered
   program writes them: the child alone to /dev/null, the child through a pipe read into
   a plain file (what supervisord does), and slotd with 1 and with 3 such sessions,
   each timed from the child's first write (it writes the time to a file) to its last
   line written (alone) or seen stored (slotd); the bar: slotd's 1 session at most 1.6
   times the child alone. Twice: with a child that calls print(line, flush=True), a
   line-buffered Python program like the one issue 14 measured, and with one that
   makes the same calls as fast as Python can (os.write), to which every write's cost
   in capture weighs twice as much (--line-writer picks one).

It prints a table of ratios against the bars. A missed bar is reported, not an error;
the exit status is non-zero only if the stored transcripts are wrong. Everything it
creates lives in a temporary directory that is removed at the end. MB = 10**6 bytes,
MiB = 2**20 bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import apsw
import psutil

# The checkout this script belongs to, not whichever one the virtualenv points at (the
# daemon is started from that checkout too, by the tests' harness).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.client import Client
from supervisor.model import utc_now
from supervisor.store import Reader, Session, Store
from tests.harness import DaemonHandle, clean_up_on_sigterm

SESSIONS = 3
LINE_BYTES = 100
MAX_CHUNK = 64 * 1024
LINES_PER_ROW = MAX_CHUNK // LINE_BYTES  # 655 whole lines: 65,500 bytes
ROWS_PER_TRANSACTION = 1000
PER_LINE_SAMPLE = 20_000
PER_LINE_BUDGET = 5.0  # seconds
RSS_INTERVAL = 0.05
INSERT = "INSERT INTO transcript (session_id, seq, ts, stream, data) VALUES (?, ?, ?, ?, ?)"


def line_blocks(lines):
    """Numbered lines of exactly 100 bytes ("000000042 xxx...x\\n"), 1000 to a block.

    This function's source is also the session's program, so the benchmark knows the
    exact bytes each session writes. One %-format per block keeps the writer fast.
    """
    per_block = 1000
    fill = b"x" * 89
    template = b"".join(b"%06d" + b"%03d " % j + fill + b"\n" for j in range(per_block))
    for block in range(-(-lines // per_block)):
        data = template % ((block,) * per_block)
        remaining = lines - block * per_block
        yield data if remaining >= per_block else data[: remaining * 100]


def session_program(lines: int) -> str:
    """The Python source a session runs: write the lines to stdout as fast as it can."""
    return textwrap.dedent(inspect.getsource(line_blocks)) + textwrap.dedent(f"""
        import sys
        out = sys.stdout.buffer
        for block in line_blocks({lines}):
            out.write(block)
        out.flush()
        """)


# How a line-by-line child writes each line, one write() per line either way:
# "print": a line-buffered Python program, print(line, flush=True); the kind of child
#     issue 14's table measured (0.89 s alone there; about 0.9 s here).
# "os.write": os.write(1, line) on slices of a prepared block, the fastest a Python
#     program can make the calls: about 0.4 s alone, so what capture costs per write
#     weighs more than twice as much against it.
LINE_WRITERS = {
    "print": """
        for block in line_blocks({lines}):
            for line in block.decode().splitlines(keepends=True):
                print(line, end="", flush=True)
        """,
    "os.write": """
        import os
        for block in line_blocks({lines}):
            view = memoryview(block)
            for start in range(0, len(block), {line_bytes}):
                os.write(1, view[start : start + {line_bytes}])
        """,
}


def line_program(lines: int, stamp: Path, writer: str) -> str:
    """The same lines, one write() each, as a line-buffered program (or any program on a
    terminal) writes them, the way LINE_WRITERS[writer] says; the time of its first
    write goes to the file `stamp`, since the wall measured is from the child's first
    write (its interpreter and slotd's shim start before it in every approach alike)."""
    return (
        textwrap.dedent(inspect.getsource(line_blocks))
        + textwrap.dedent(f"""
        import time
        with open({str(stamp)!r}, "w") as stamp:
            stamp.write(repr(time.time()))
        """)
        + textwrap.dedent(LINE_WRITERS[writer].format(lines=lines, line_bytes=LINE_BYTES))
    )


def first_write(stamp: Path) -> float:
    return float(stamp.read_text())


def measure_child(lines: int, writer: str, to_file: Path | None, stamp: Path) -> dict:
    """The line-by-line child alone, from its first write to its last line written: to
    /dev/null, or through a pipe read into a plain file (what supervisord does)."""
    argv = [sys.executable, "-c", line_program(lines, stamp, writer)]
    settle()
    if to_file is None:
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    else:
        with open(to_file, "wb") as out, subprocess.Popen(argv, stdout=subprocess.PIPE) as child:
            assert child.stdout is not None
            while data := os.read(child.stdout.fileno(), 65536):
                out.write(data)
        if child.returncode != 0 or to_file.stat().st_size != lines * LINE_BYTES:
            raise RuntimeError(f"the child wrote {to_file.stat().st_size} bytes, exit status {child.returncode}")
    return _rates(lines, time.time() - first_write(stamp))


def session_rows(lines: int) -> list[bytes]:
    """One session's stdout as slotd would store it at best: rows of whole lines up to 64 KiB."""
    data = b"".join(line_blocks(lines))
    step = LINES_PER_ROW * LINE_BYTES
    return [data[start : start + step] for start in range(0, len(data), step)]


def new_database(path: Path, session_ids: list[str]) -> apsw.Connection:
    """A database with slotd's schema and pragmas, holding the given (running) sessions."""
    store = Store(path)
    for session_id in session_ids:
        store.create_session(
            Session(id=session_id, arrival=0, argv=["bench"], cwd="/", status="queued", queued_at=utc_now())
        )
    # Store opened it with supervisor.store.connect and migrate: slotd's pragmas exactly.
    return store.db


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def settle() -> None:
    """Flush dirty pages, so the kernel's writeback of one measurement does not slow the next."""
    os.sync()


def insert_batched(db: apsw.Connection, work: list[tuple[str, int, bytes]]) -> None:
    """Insert (session, seq, row) triples, ROWS_PER_TRANSACTION to a transaction."""
    for start in range(0, len(work), ROWS_PER_TRANSACTION):
        with db:
            db.executemany(
                INSERT,
                (
                    (sid, seq, time.time(), "stdout", chunk)
                    for sid, seq, chunk in work[start : start + ROWS_PER_TRANSACTION]
                ),
            )


def measure_raw_batched(workdir: Path, lines: int) -> dict:
    """The limit: 3 sessions' rows, interleaved, ~1000 rows per transaction."""
    ids = [f"raw-{n}" for n in range(SESSIONS)]
    path = workdir / "raw.db"
    db = new_database(path, ids)
    rows = session_rows(lines)
    # Interleave the sessions, as one flush of slotd's ingest would.
    work = [(session_id, seq, chunk) for seq, chunk in enumerate(rows, 1) for session_id in ids]
    del rows
    settle()
    started = time.perf_counter()
    insert_batched(db, work)
    elapsed = time.perf_counter() - started
    db.close()
    remove_database(path)
    return _rates(SESSIONS * lines, elapsed) | {
        "rows": len(work),
        "transactions": -(-len(work) // ROWS_PER_TRANSACTION),
    }


def measure_raw_generating(workdir: Path, lines: int) -> dict:
    """Raw APSW batched again, with the data produced inside the timed run.

    The same lines made by the same generator the sessions run, packed into the same
    rows, inserted the same way: what programs writing straight into SQLite would cost.
    slotd's own time includes its sessions producing their output, so this is the
    like-for-like limit; the insert-only limit above is printed beside it.
    """
    ids = [f"gen-{n}" for n in range(SESSIONS)]
    path = workdir / "raw_generating.db"
    db = new_database(path, ids)
    step = LINES_PER_ROW * LINE_BYTES
    settle()
    started = time.perf_counter()
    outputs = [b"".join(line_blocks(lines)) for _ in ids]
    work = [
        (session_id, seq, output[start : start + step])
        for seq, start in enumerate(range(0, len(outputs[0]), step), 1)
        for session_id, output in zip(ids, outputs, strict=True)
    ]
    insert_batched(db, work)
    elapsed = time.perf_counter() - started
    db.close()
    remove_database(path)
    return _rates(SESSIONS * lines, elapsed)


def measure_per_line(workdir: Path, lines: int) -> dict:
    """The approach to beat: each line a row in a transaction of its own (on a sample)."""
    path = workdir / "per_line.db"
    db = new_database(path, ["per-line"])
    sample = min(lines, PER_LINE_SAMPLE)
    done = 0
    settle()
    started = time.perf_counter()
    deadline = started + PER_LINE_BUDGET
    for block in line_blocks(sample):
        for offset in range(0, len(block), LINE_BYTES):
            done += 1
            with db:
                db.execute(INSERT, ("per-line", done, time.time(), "stdout", block[offset : offset + LINE_BYTES]))
        if time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - started
    db.close()
    remove_database(path)
    return _rates(done, elapsed) | {"sample_lines": done}


def _rates(lines: int, seconds: float) -> dict:
    return {
        "lines": lines,
        "seconds": seconds,
        "lines_per_s": lines / seconds,
        "mb_per_s": lines * LINE_BYTES / seconds / 1e6,
    }


class RssSampler(threading.Thread):
    """Peak RSS of the daemon and of each shim (the daemon's `-m supervisor.shim` children),
    and the peak size of the database's WAL file."""

    def __init__(self, daemon_pid: int, shims: int, wal_path: Path) -> None:
        super().__init__(daemon=True)
        self.wal_path = wal_path
        self.wal_peak = 0
        self.daemon_process = psutil.Process(daemon_pid)
        self.expected_shims = shims
        self.shims: dict[int, psutil.Process] = {}
        self.commands: dict[int, psutil.Process] = {}  # the shims' session commands, for their CPU time
        self.daemon_peak = 0
        self.shim_peaks: dict[int, int] = {}
        # CPU seconds (user + system) at the last sample: where the machine's time went.
        self.cpu: dict[int, float] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(RSS_INTERVAL):
            self.sample()

    def sample(self) -> None:
        try:
            self.wal_peak = max(self.wal_peak, self.wal_path.stat().st_size)
        except FileNotFoundError:
            pass
        try:
            self.daemon_peak = max(self.daemon_peak, self.daemon_process.memory_info().rss)
            # Listing children scans all of /proc: only until every shim has been seen.
            children = self.daemon_process.children() if len(self.shims) < self.expected_shims else []
        except psutil.NoSuchProcess:
            return
        for child in children:
            if child.pid not in self.shims:
                try:
                    if "supervisor.shim" in child.cmdline():
                        self.shims[child.pid] = child
                except psutil.NoSuchProcess:
                    continue
        for pid, shim in self.shims.items():
            try:
                self.shim_peaks[pid] = max(self.shim_peaks.get(pid, 0), shim.memory_info().rss)
                self.cpu[pid] = sum(shim.cpu_times()[:2])
                if len(self.commands) < len(self.shims):
                    for command in shim.children():
                        self.commands.setdefault(command.pid, command)
            except psutil.NoSuchProcess:
                pass
        for pid, command in self.commands.items():
            try:
                self.cpu[pid] = sum(command.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def measure_slotd(
    workdir: Path, lines: int, sessions: int = SESSIONS, line_writer: str | None = None, session_nice: int | None = None
) -> dict:
    """A real daemon, `sessions` sessions at once (writing 64 KiB blocks, or a line per
    write as LINE_WRITERS[line_writer] says): time to all completed, peak RSS, then
    verification."""
    line_by_line = line_writer is not None
    root = workdir / f"slotd-{sessions}-{line_writer or 'blocks'}"
    root.mkdir()
    handle = DaemonHandle(
        root, {"on_shutdown": "stop", **({} if session_nice is None else {"session_nice": session_nice})}
    )
    daemon = handle.start(wait=False)
    sampler = None
    try:
        handle.wait_ready(timeout=30)
        sampler = RssSampler(daemon.pid, sessions, Path(f"{handle.database}-wal"))
        sampler.start()
        stamps = [root / f"first-write-{index}" for index in range(sessions)]
        settle()
        # Generous: even 10,000 lines/s would make it.
        timeout = 60 + sessions * lines / 10_000
        # No socket timeout: the daemon's wait is silent until the sessions end.
        with handle.client(timeout=None) as client:
            daemon_cpu_before = sum(psutil.Process(daemon.pid).cpu_times()[:2])
            threads_before = thread_cpu(daemon.pid)
            started = time.perf_counter()
            ids = [
                client.request(
                    "start",
                    argv=[
                        sys.executable,
                        "-c",
                        session_program(lines) if line_writer is None else line_program(lines, stamp, line_writer),
                    ],
                    cwd=str(root),
                )["id"]
                for stamp in stamps
            ]
            statuses = wait_until_ended(client, ids, started + timeout)
            # Line by line, as issue 14 measures: from the first write of the first
            # session to seeing the last stored (the sessions' exit is stored after it).
            elapsed = (
                time.time() - min(first_write(stamp) for stamp in stamps)
                if line_by_line
                else time.perf_counter() - started
            )
            sampler.stop()
            daemon_cpu = sum(psutil.Process(daemon.pid).cpu_times()[:2]) - daemon_cpu_before
            threads_after = thread_cpu(daemon.pid)
            daemon_threads = {name: seconds - threads_before.get(name, 0.0) for name, seconds in threads_after.items()}
            client.request("shutdown", mode="stop")
        daemon.wait(timeout=60)
    except BaseException:
        # The temporary directory goes with the exception: show why the daemon failed
        # first, giving a crashing daemon a moment to write its traceback.
        try:
            daemon.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        print(
            f"slotd (exit status {daemon.returncode}) log, last lines:", *handle.log_tail(), sep="\n  ", file=sys.stderr
        )
        raise
    finally:
        if sampler is not None:
            sampler.stop()
        # Only if the daemon failed: it, then what its sessions left behind.
        handle.stop()
    return _rates(sessions * lines, elapsed) | {
        "statuses": statuses,
        "daemon_cpu_s": daemon_cpu,
        "daemon_threads_cpu_s": daemon_threads,
        "shims_cpu_s": sum(sampler.cpu.get(pid, 0.0) for pid in sampler.shims),
        "commands_cpu_s": sum(sampler.cpu.get(pid, 0.0) for pid in sampler.commands),
        "daemon_peak_rss": sampler.daemon_peak,
        "shim_peak_rss": max(sampler.shim_peaks.values(), default=0),
        "shims_sampled": len(sampler.shim_peaks),
        "wal_peak": sampler.wal_peak,
        "daemon_exit": daemon.returncode,
        "problems": verify(handle.database, ids, lines, statuses)
        + ([f"slotd exited with status {daemon.returncode} after shutdown"] if daemon.returncode else []),
    }


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user and system) of each of a process's threads, by thread name
    (threads of one name summed: trio's workers)."""
    seconds: dict[str, float] = {}
    for thread in psutil.Process(pid).threads():
        try:
            name = Path(f"/proc/{pid}/task/{thread.id}/comm").read_text().strip()
        except OSError:
            continue  # ended meanwhile
        name = "event loop" if thread.id == pid else name
        seconds[name] = seconds.get(name, 0.0) + thread.user_time + thread.system_time
    return seconds


def wait_until_ended(client: Client, ids: list[str], deadline: float) -> dict[str, str]:
    """Wait for every session to end, with the daemon's `wait` (woken by the sessions'
    own changes: no polling adds its requests to the work measured); return their final
    statuses."""
    for message in client.messages("wait", sessions=ids, timeout=max(0.0, deadline - time.perf_counter())):
        if "waiting" in message:
            continue
        if not message.get("ok"):
            raise RuntimeError(f"wait refused: {message.get('error')}")
        result = message["result"]
        if result["timed_out"]:
            raise RuntimeError(f"sessions not done in time: {result['pending']}")
        return {session["id"]: session["status"] for session in result["sessions"]}
    raise RuntimeError("the daemon closed the connection during wait")


def verify(database: Path, ids: list[str], lines: int, statuses: dict[str, str]) -> list[str]:
    """What is wrong with the stored transcripts: every line once, in order, no seq gap."""
    expected = hashlib.sha256()
    for block in line_blocks(lines):
        expected.update(block)
    problems = []
    reader = Reader(database)
    try:
        for session_id in ids:
            if statuses[session_id] != "completed":
                problems.append(f"{session_id}: ended {statuses[session_id]}, not completed")
            stdout, stdout_bytes, seq = hashlib.sha256(), 0, 0
            for row in reader.iter_transcript(session_id):
                seq += 1
                if row.seq != seq:
                    problems.append(f"{session_id}: seq {row.seq} where {seq} was due")
                    seq = row.seq
                if row.stream == "stdout":
                    stdout.update(row.data)
                    stdout_bytes += len(row.data)
            if stdout_bytes != lines * LINE_BYTES or stdout.digest() != expected.digest():
                problems.append(
                    f"{session_id}: stdout has {stdout_bytes:,} bytes, not the {lines * LINE_BYTES:,} written"
                )
    finally:
        reader.close()
    return problems


def report(lines: int, raw: dict, raw_generating: dict, per_line: dict, slotd: dict) -> dict:
    """Print the table; return the numbers and verdicts."""

    def row(name: str, result: dict) -> str:
        return f"{name:<42}{result['lines_per_s']:>12,.0f}{result['mb_per_s']:>9.1f}{result['lines_per_s'] / raw['lines_per_s']:>9.3f}"

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    vs_raw = slotd["lines_per_s"] / raw["lines_per_s"]
    vs_generating = slotd["lines_per_s"] / raw_generating["lines_per_s"]
    vs_per_line = slotd["lines_per_s"] / per_line["lines_per_s"]
    daemon_mib = slotd["daemon_peak_rss"] / 2**20
    shim_mib = slotd["shim_peak_rss"] / 2**20
    stored_ok = not slotd["problems"]
    print(
        f"ingest benchmark: {SESSIONS} sessions x {lines:,} lines x {LINE_BYTES} bytes  (machine: {os.cpu_count()} cores)"
    )
    print(f"{'approach':<42}{'lines/s':>12}{'MB/s':>9}{'vs raw':>9}")
    print(row("raw APSW batched, insert only", raw))
    print(row("raw APSW batched, generating the lines", raw_generating))
    print(row(f"one transaction per line ({per_line['sample_lines']:,} sample)", per_line))
    print(row(f"slotd ({SESSIONS} concurrent sessions)", slotd))
    print(f"slotd / raw APSW (insert only)      = {vs_raw:.2f}  (bar: >= 0.5)  {verdict(vs_raw >= 0.5)}")
    print(f"slotd / raw APSW (generating lines) = {vs_generating:.2f}  (bar: >= 0.5)  {verdict(vs_generating >= 0.5)}")
    print(f"slotd / per-line  = {vs_per_line:.0f}x  (bar: >= 20x)    {verdict(vs_per_line >= 20)}")
    print(f"daemon peak RSS   = {daemon_mib:.1f} MiB (bar: < 100 MB) {verdict(daemon_mib * 2**20 < 100e6)}")
    print(
        f"shim peak RSS     = {shim_mib:.1f} MiB (bar: < 100 MB) {verdict(shim_mib * 2**20 < 100e6)}  (max of {slotd['shims_sampled']} shims)"
    )
    wal_mib = slotd["wal_peak"] / 2**20
    print(f"WAL peak size     = {wal_mib:.1f} MiB (bar: < 100 MB) {verdict(slotd['wal_peak'] < 100e6)}")
    print(
        f"slotd CPU seconds = daemon {slotd['daemon_cpu_s']:.2f} ({threads_text(slotd['daemon_threads_cpu_s'])}), "
        f"shims {slotd['shims_cpu_s']:.2f}, "
        f"commands {slotd['commands_cpu_s']:.2f}  (of {os.cpu_count()} cores x {slotd['seconds']:.2f} s wall)"
    )
    print(f"every line stored exactly once: {'yes' if stored_ok else 'no'}")
    for problem in slotd["problems"]:
        print(f"  {problem}")
    return {
        "sessions": SESSIONS,
        "lines_per_session": lines,
        "line_bytes": LINE_BYTES,
        "cpu_count": os.cpu_count(),
        "raw_batched": raw,
        "raw_batched_generating": raw_generating,
        "slotd_vs_raw_generating": vs_generating,
        "per_line": per_line,
        "slotd": slotd,
        "slotd_vs_raw": vs_raw,
        "slotd_vs_per_line": vs_per_line,
        "pass": {
            "vs_raw": vs_raw >= 0.5,
            "vs_raw_generating": vs_generating >= 0.5,
            "vs_per_line": vs_per_line >= 20,
            "daemon_rss": slotd["daemon_peak_rss"] < 100e6,
            "shim_rss": slotd["shim_peak_rss"] < 100e6,
            "wal_size": slotd["wal_peak"] < 100e6,
            "stored_exactly_once": stored_ok,
        },
    }


def main() -> int:
    clean_up_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines per session (default 1,000,000)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON to PATH")
    parser.add_argument(
        "--only", choices=["blocks", "lines"], help="only the 64 KiB block writes, or only the line-by-line writes"
    )
    parser.add_argument(
        "--line-writer",
        choices=[*LINE_WRITERS, "both"],
        default="both",
        help="how the line-by-line child writes each line (see LINE_WRITERS; default: both, one after the other)",
    )
    parser.add_argument("--session-nice", type=int, help="the daemon's session_nice (default: its own default, 10)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="slotd-bench-"))
    results: dict = {}
    try:
        if args.only != "lines":
            raw = measure_raw_batched(workdir, args.lines)
            raw_generating = measure_raw_generating(workdir, args.lines)
            per_line = measure_per_line(workdir, args.lines)
            slotd = measure_slotd(workdir, args.lines, session_nice=args.session_nice)
            results["blocks"] = report(args.lines, raw, raw_generating, per_line, slotd)
        if args.only != "blocks":
            for writer in LINE_WRITERS if args.line_writer == "both" else [args.line_writer]:
                stamp = workdir / "first-write"
                line_results = {
                    "child_to_devnull": measure_child(args.lines, writer, None, stamp),
                    "child_to_file": measure_child(args.lines, writer, workdir / "lines.out", stamp),
                    "slotd_1": measure_slotd(workdir, args.lines, 1, writer, args.session_nice),
                    "slotd_3": measure_slotd(workdir, args.lines, SESSIONS, writer, args.session_nice),
                }
                results[f"lines {writer}"] = report_line_by_line(args.lines, writer, line_results)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    stored = [part["pass"]["stored_exactly_once"] for part in results.values()]
    return 0 if all(stored) else 1


def threads_text(seconds: dict[str, float]) -> str:
    """The daemon's busiest threads' CPU seconds, in a few words."""
    busy = sorted(((value, name) for name, value in seconds.items() if value >= 0.005), reverse=True)
    return ", ".join(f"{name} {value:.2f}" for value, name in busy)


# The line-by-line bar (issue 14): one session's wall at most this many times the
# child's alone writing to /dev/null.
LINE_BY_LINE_BAR = 1.6


def report_line_by_line(lines: int, writer: str, results: dict) -> dict:
    """Print the line-by-line table (each approach's wall against the child's alone)."""
    alone = results["child_to_devnull"]["seconds"]
    how = "print(line, flush=True)" if writer == "print" else "os.write(1, line)"
    print(f"\nline by line: one write() per {LINE_BYTES}-byte line, {how}, {lines:,} lines per session")
    print(f"{'approach':<46}{'wall':>9}{'lines/s':>12}{'vs child alone':>16}")
    for key, name, count in (
        ("child_to_devnull", "child -> /dev/null", 1),
        ("child_to_file", "child -> pipe -> reader -> plain file", 1),
        ("slotd_1", "slotd, 1 session", 1),
        ("slotd_3", f"slotd, {SESSIONS} sessions at once", SESSIONS),
    ):
        result = results[key]
        print(
            f"{name:<46}{result['seconds']:>8.2f}s{result['lines_per_s']:>12,.0f}{result['seconds'] / alone:>15.2f}x"
            + ("" if count == 1 else f"  ({count} x the lines)")
        )
    for key in ("slotd_1", "slotd_3"):
        result = results[key]
        print(
            f"  {key.replace('_', ' ')}: CPU seconds daemon {result['daemon_cpu_s']:.2f} "
            f"({threads_text(result['daemon_threads_cpu_s'])}), "
            f"shims {result['shims_cpu_s']:.2f}, commands {result['commands_cpu_s']:.2f}"
        )
    ratio = results["slotd_1"]["seconds"] / alone
    problems = results["slotd_1"]["problems"] + results["slotd_3"]["problems"]
    print(
        f"slotd 1 session / child alone = {ratio:.2f}  (bar: <= {LINE_BY_LINE_BAR})  {'PASS' if ratio <= LINE_BY_LINE_BAR else 'FAIL'}"
    )
    print(f"every line stored exactly once: {'yes' if not problems else 'no'}")
    for problem in problems:
        print(f"  {problem}")
    return results | {
        "slotd_1_vs_child": ratio,
        "pass": {"line_by_line": ratio <= LINE_BY_LINE_BAR, "stored_exactly_once": not problems},
    }


if __name__ == "__main__":
    sys.exit(main())
