"""The latency benchmark (SPEC §8, the bars after ingest): follow and control latency
under load, restart to READY with 10,000,000 stored rows, and idle CPU.

    .venv/bin/python bench/latency.py                    # the full run (about 80 seconds)
    .venv/bin/python bench/latency.py --quick            # a short run (about 20 seconds)
    .venv/bin/python bench/latency.py --only restart     # some phases: load, restart, idle
    .venv/bin/python bench/latency.py --json out.json    # the numbers as JSON too

Each phase runs a real daemon (``python -m supervisor daemon``) in a directory of its own:

1. load: the same three latencies measured twice on one daemon, first idle (no writers),
   then while two sessions write 100-byte lines as fast as they can (bench/ingest.py's
   generator). Throughout, a third session prints one line every 20 ms carrying its own
   ``time.time()``, and a fourth and a fifth, on terminals (``tty: true``), put them in
   raw mode without echo and write back each byte they read. Four probes at once:
   - follow latency: a ``follow`` client on the ticking session takes, for each line,
     the time it arrived minus the time written in it (lines written before the follow
     request are left out: they come from the stored backlog). Bar: p99 < 20 ms.
   - control latency: ``ps`` round trips on one persistent connection, one every 10 ms.
     Bar: p99 < 10 ms.
   - keystroke to echo: one byte sent to the terminal session with ``send`` on one
     persistent connection, every 20 ms, timed until it comes back on a ``follow`` of
     the session's ``tty`` stream on another: the two paths ``slotctl attach`` takes for
     a key and for what the screen shows: the daemon's part of attach.
   - keystroke to echo through ``slotctl attach``, as a person sees it: the real slotctl
     attached to the fifth session from a pseudo-terminal of its own; a byte written to
     that terminal every 20 ms, timed until slotctl has written its echo back to it.
     Bar: p99 < 30 ms.
   The bars are for the figures under load; the idle ones beside them show what the
   load costs. The load average (1 min) is printed before and after, and how long the
   daemon's event loop thread waited for a core (schedstat): on a shared machine they
   say how much else ran, and how much of the latency is waiting for the CPU.
2. restart: a database with 10,000,000 transcript rows (10 bytes each, spread over
   ended sessions, inserted straight into slotd's schema with APSW while no daemon runs)
   and 3 live sessions (sleep-print loops). The daemon is SIGKILLed and started again,
   3 times; each start is timed from just before the process is spawned until the
   "READY=1" datagram arrives on $NOTIFY_SOCKET (a datagram socket bound in the temporary
   directory, as systemd would), and until the control socket answers ``info``. After each
   start the 3 sessions must be running again with the same command pids (re-attached, not
   restarted). Bar: READY in under 1 s, every time.
3. idle: a daemon with 3 sleeping sessions and nothing else; its CPU time (user + system,
   psutil) over 30 s, in percent of one core. Bar: < 0.5 %.

On a 2-core machine the load phase is CPU-bound by design: the writers take all the CPU
they are given, so its figures move with whatever else runs; psutil counts CPU time in 10 ms ticks, so the idle figure is ±0.03 % over 30 s.

It prints a table with each bar and PASS or FAIL. A missed bar is reported, not an error;
the exit status is non-zero only if a phase could not be measured (or re-attaching
failed). Percentiles are nearest-rank. Everything it creates lives in a temporary directory
that is removed at the end, with every daemon, shim and session it started ended (the
sessions by their recorded pid and start time, never by name). Daemons are started,
awaited and stopped by the tests' harness (tests/harness.py), as in the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import psutil

# The checkout this script belongs to (the daemon is started from it), and bench/ itself
# for the ingest benchmark's helpers.
CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))
sys.path.insert(0, str(CHECKOUT / "bench"))

from ingest import LINE_BYTES, session_program, settle  # noqa: E402

from supervisor.client import Client, DaemonUnavailable  # noqa: E402
from supervisor.model import unix_from_iso, utc_now  # noqa: E402
from supervisor.protocol import decode_data  # noqa: E402
from supervisor.store import Session, Store  # noqa: E402
from tests.harness import DaemonHandle, clean_up_on_sigterm  # noqa: E402

POLL_INTERVAL = 0.005  # between looks while setting a measurement up (never during one)

FULL = {
    "follow_lines": 500,
    "ps_rounds": 1000,
    "keystrokes": 500,
    "rows": 10_000_000,
    "restarts": 3,
    "idle_seconds": 30.0,
}
QUICK = {
    "follow_lines": 100,
    "ps_rounds": 200,
    "keystrokes": 100,
    "rows": 1_000_000,
    "restarts": 1,
    "idle_seconds": 5.0,
}
PHASES = ("load", "restart", "idle")

FOLLOW_BAR = 0.020  # s, p99 under load
CONTROL_BAR = 0.010  # s, p99 under load
ECHO_BAR = 0.030  # s, p99 under load
READY_BAR = 1.0  # s, every start
IDLE_BAR = 0.5  # % of one core

TICK_INTERVAL = 0.020  # the followed session's line interval
PS_INTERVAL = 0.010
KEYSTROKE_INTERVAL = 0.020
# The bytes typed, one per keystroke, in turn: each echo is told from the one before.
KEYS = b"abcdefghijklmnopqrstuvwxyz"
WARMUP = 1.0  # s of full-speed ingest before the clocks start
# bench/ingest.py's writer, told to write more lines than any run lasts: it writes until stopped.
ENDLESS = 10**12

ENDED_SESSIONS = 5
ROW_DATA = b"123456789\n"
BUILD_ROWS_PER_TRANSACTION = 1_000_000
# One statement per million rows, the rows made inside SQLite: twice as fast here as
# executemany, whose per-row binding and stepping costs more than the insert itself.
BUILD_ROWS = (
    "WITH RECURSIVE seqs(seq) AS (SELECT ? UNION ALL SELECT seq + 1 FROM seqs WHERE seq < ?) "
    "INSERT INTO transcript (session_id, seq, ts, stream, data) SELECT ?, seq, ?, 'stdout', ? FROM seqs"
)
LIVE_SESSIONS = 3
SLEEP_PRINT = "import time\nn = 0\nwhile True:\n    n += 1\n    print(n, flush=True)\n    time.sleep(0.5)\n"
SLEEPER = "import time\ntime.sleep(10**6)\n"


def ticker_program(interval: float) -> str:
    """The followed session: line n carries the time it was written, on a fixed schedule."""
    return textwrap.dedent(f"""
        import os, time
        n = 0
        due = time.monotonic()
        while True:
            n += 1
            os.write(1, b"%d %.6f\\n" % (n, time.time()))
            due += {interval}
            time.sleep(max(0.0, due - time.monotonic()))
        """)


# The terminal session: raw mode without echo (as an editor or a shell's line editor
# sets it), each byte read written back, so what comes back is the program's echo.
# READY once it is in raw mode: a key typed before would be echoed by the terminal
# itself, then dropped by setraw's flush.
ECHO_PROGRAM = textwrap.dedent("""
    import os, tty
    tty.setraw(0)
    os.write(1, b"READY")
    while data := os.read(0, 1024):
        os.write(1, data)
    """)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p % of values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


# -- daemons and sessions ----------------------------------------------------------------


def new_daemon(root: Path) -> DaemonHandle:
    """A slotd (not yet started) in a directory of its own: config, state, runtime, log."""
    root.mkdir(parents=True, exist_ok=True)
    # Slots for the load phase's five sessions: the ticker, two terminals, two writers.
    return DaemonHandle(root, {"on_shutdown": "stop", "slots": 5})


def start_sessions(client: Client, programs: list[str], cwd: Path, **args: Any) -> list[str]:
    return [
        client.request("start", argv=[sys.executable, "-c", program], cwd=str(cwd), **args)["id"]
        for program in programs
    ]


def wait_until_started(client: Client, ids: list[str], timeout: float = 30) -> dict[str, dict]:
    """Poll until every session runs its command (its pid is recorded); return them."""
    deadline = time.monotonic() + timeout
    while True:
        sessions = {session["id"]: session for session in client.request("ps") if session["id"] in ids}
        if len(sessions) == len(ids) and all(s["status"] == "running" and s["pid"] for s in sessions.values()):
            return sessions
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"sessions not running after {timeout}s: {[(s['id'][:8], s['status']) for s in sessions.values()]}"
            )
        time.sleep(POLL_INTERVAL)


# -- 1. follow, control and keystroke latency, idle and under load -----------------------


class Probe(threading.Thread):
    """One measurement, run in a thread of its own beside the others: its latencies in
    seconds, and whatever it raised (reported by the main thread)."""

    def __init__(self, daemon: DaemonHandle) -> None:
        super().__init__(daemon=True)
        self.daemon_process = daemon
        self.latencies: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.measure()
        except BaseException as error:  # reported by the main thread
            self.error = error

    def measure(self) -> None:
        raise NotImplementedError

    def summary(self) -> dict:
        return summary(self.latencies)


def paced(count: int, interval: float) -> Iterator[int]:
    """0 to count - 1, one every `interval` seconds (a late one at once, none skipped)."""
    due = time.perf_counter()
    for number in range(count):
        yield number
        due += interval
        time.sleep(max(0.0, due - time.perf_counter()))


def key(number: int) -> bytes:
    """The number-th keystroke a probe types."""
    return KEYS[number % len(KEYS) : number % len(KEYS) + 1]


class FollowProbe(Probe):
    """Follows the ticking session; per line, arrival time minus the time written in it."""

    def __init__(self, daemon: DaemonHandle, session_id: str, lines: int) -> None:
        super().__init__(daemon)
        self.session_id = session_id
        self.wanted = lines
        # Where the time goes: command write -> shim record (the row's ts), row ts -> arrival.
        self.to_shim: list[float] = []
        self.to_client: list[float] = []
        self.skipped = 0
        self.numbers: list[int] = []

    def measure(self) -> None:
        partial = b""
        with self.daemon_process.client() as client:
            requested = time.time()
            client.send("follow", session=self.session_id, stream="stdout")
            while len(self.latencies) < self.wanted:
                message = client.receive()
                arrived = time.time()
                if "ok" in message:
                    raise RuntimeError(f"follow ended early: {message}")
                row = message["row"]
                recorded = unix_from_iso(row["ts"])
                data = partial + decode_data(row)
                *lines, partial = data.split(b"\n")
                for line in lines:
                    number, written = line.split()
                    written = float(written)
                    if written < requested:
                        self.skipped += 1  # stored before the follow began: backlog, not latency
                        continue
                    self.numbers.append(int(number))
                    self.latencies.append(arrived - written)
                    self.to_shim.append(recorded - written)
                    self.to_client.append(arrived - recorded)

    def missing(self) -> int:
        """Lines the follow never delivered between the first and last it measured."""
        if not self.numbers:
            return 0
        return (self.numbers[-1] - self.numbers[0] + 1) - len(set(self.numbers))

    def summary(self) -> dict:
        return summary(self.latencies) | {
            "write_to_shim": summary(self.to_shim),
            "shim_to_client": summary(self.to_client),
            "skipped_backlog_lines": self.skipped,
            "missing_lines": self.missing(),
        }


class ControlProbe(Probe):
    """`ps` round trips on one persistent connection, one every PS_INTERVAL."""

    def __init__(self, daemon: DaemonHandle, rounds: int) -> None:
        super().__init__(daemon)
        self.rounds = rounds

    def measure(self) -> None:
        with self.daemon_process.client() as client:
            for _ in paced(self.rounds, PS_INTERVAL):
                started = time.perf_counter()
                client.request("ps")
                self.latencies.append(time.perf_counter() - started)


class KeystrokeProbe(Probe):
    """A probe that types into a terminal session and times each key's echo: what
    comes back from the terminal goes into `arrivals`, with the time it arrived."""

    def __init__(self, daemon: DaemonHandle, session_id: str, keystrokes: int) -> None:
        super().__init__(daemon)
        self.session_id = session_id
        self.keystrokes = keystrokes
        self.arrivals: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def wait_for(self, text: bytes, deadline: float, exact: bool = True) -> float:
        """When text had all come back; exact: and nothing else with it (anything else
        the terminal showed is an error)."""
        seen = b""
        while text not in seen:
            arrived, data = self.arrivals.get(timeout=max(0.0, deadline - time.perf_counter()))
            seen += data
        if exact and seen != text:
            raise RuntimeError(f"typed {text!r}, the terminal showed {seen!r}")
        return arrived


class EchoProbe(KeystrokeProbe):
    """Keystroke to echo: one byte sent with `send` every KEYSTROKE_INTERVAL on one
    connection, timed until it comes back on a `follow` of the terminal on another."""

    def measure(self) -> None:
        with self.daemon_process.client() as keys, self.daemon_process.client() as screen:
            # From the terminal's last row on: nothing it printed before is an echo.
            since = keys.request("show", session=self.session_id)["transcript"]["last_seq"]
            screen.send("follow", session=self.session_id, stream="tty", since_seq=since)
            watcher = threading.Thread(target=self.watch, args=(screen,), daemon=True)
            watcher.start()
            try:
                self.type_keys(keys)
            finally:
                # Ends the watcher's read (closing alone would wait for it).
                screen.sock.shutdown(socket.SHUT_RDWR)
                watcher.join()

    def type_keys(self, keys: Client) -> None:
        for number in paced(self.keystrokes, KEYSTROKE_INTERVAL):
            sent = time.perf_counter()
            keys.request("send", session=self.session_id, data=key(number).decode())
            self.latencies.append(self.wait_for(key(number), sent + 10) - sent)

    def watch(self, screen: Client) -> None:
        """Note the time each piece of the terminal's output arrives (in its own thread,
        so the arrival is timed however long the `send` reply takes)."""
        try:
            while True:
                message = screen.receive()
                if "ok" in message:
                    return
                self.arrivals.put((time.perf_counter(), decode_data(message["row"])))
        except (OSError, ValueError):
            return  # the probe is over and closed the connection


class AttachProbe(KeystrokeProbe):
    """Keystroke to echo as a person at `slotctl attach` sees it: the real slotctl on a
    pseudo-terminal of its own, a byte written to that terminal every KEYSTROKE_INTERVAL,
    timed until slotctl has written its echo back to it (keystroke thread, `send`,
    session, `follow`, slotctl's output: all of attach's path)."""

    def measure(self) -> None:
        master, slave = os.openpty()
        attach = subprocess.Popen(
            self.daemon_process.cli_argv("attach", self.session_id),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        reader = threading.Thread(target=self.read, args=(master,), daemon=True)
        reader.start()
        try:
            # The screen, drawn on attach (with the echoes of an earlier run after READY):
            # once it is all there, nothing more comes until a key is typed.
            self.wait_for(b"READY", time.perf_counter() + 30, exact=False)
            with contextlib.suppress(queue.Empty):
                while True:
                    self.arrivals.get(timeout=0.3)
            for number in paced(self.keystrokes, KEYSTROKE_INTERVAL):
                typed = time.perf_counter()
                os.write(master, key(number))
                self.latencies.append(self.wait_for(key(number), typed + 10) - typed)
            os.write(master, b"\x10\x11")  # Ctrl-P Ctrl-Q: detach
            attach.wait(30)
        finally:
            if attach.poll() is None:
                attach.kill()
                attach.wait()
            os.close(master)

    def read(self, master: int) -> None:
        try:
            while data := os.read(master, 4096):
                self.arrivals.put((time.perf_counter(), data))
        except OSError:
            return  # slotctl has gone (EIO), or the probe closed the terminal


def stored_bytes(client: Client, ids: list[str]) -> int:
    """Transcript bytes ever stored for these sessions, counting what retention cut."""
    return sum(s["transcript_bytes"] + s["truncated_bytes"] for s in client.request("ps") if s["id"] in ids)


def wal_size(daemon: DaemonHandle) -> int:
    try:
        return Path(f"{daemon.database}-wal").stat().st_size
    except FileNotFoundError:
        return 0


def loop_schedstat(daemon: DaemonHandle) -> tuple[float, float]:
    """Seconds the daemon's event loop thread (its main thread) has run, and has waited
    runnable for a core: the kernel's schedstat."""
    assert daemon.process is not None
    pid = daemon.process.pid
    ran, waited, _slices = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    return int(ran) / 1e9, int(waited) / 1e9


def wait_until_printed(client: Client, session_id: str, text: bytes, timeout: float = 30) -> None:
    """Poll until the session's stored output holds text."""
    deadline = time.monotonic() + timeout
    while text not in b"".join(
        decode_data(message["row"]) for message in client.messages("logs", session=session_id) if "row" in message
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"session {session_id} did not print {text!r} within {timeout}s")
        time.sleep(POLL_INTERVAL)


def run_probes(daemon: DaemonHandle, ticker: str, echo: str, attached: str, settings: dict) -> dict:
    """Follow, ps and keystroke probes at once; their summaries, the load average, and
    how long the daemon's event loop waited for a core meanwhile."""
    load_before = os.getloadavg()[0]
    ran, waited = loop_schedstat(daemon)
    probes = {
        "follow": FollowProbe(daemon, ticker, settings["follow_lines"]),
        "control": ControlProbe(daemon, settings["ps_rounds"]),
        "echo": EchoProbe(daemon, echo, settings["keystrokes"]),
        "attach": AttachProbe(daemon, attached, settings["keystrokes"]),
    }
    started = time.perf_counter()
    for probe in probes.values():
        probe.start()
    seconds = {}
    for name, probe in probes.items():
        probe.join()
        seconds[name] = time.perf_counter() - started
    for probe in probes.values():
        if probe.error is not None:
            raise probe.error
    ran_after, waited_after = loop_schedstat(daemon)
    return {name: probe.summary() | {"seconds": seconds[name]} for name, probe in probes.items()} | {
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg()[0],
        "seconds": max(seconds.values()),
        "loop_ran": ran_after - ran,
        "loop_waited": waited_after - waited,
    }


def measure_latency(workdir: Path, settings: dict) -> dict:
    """The three latencies on an idle daemon, then under two full-speed writers."""
    daemon = new_daemon(workdir / "load")
    try:
        daemon.start(wait=False)
        daemon.wait_ready(timeout=30)
        settle()
        with daemon.client() as client:
            (ticker,) = start_sessions(client, [ticker_program(TICK_INTERVAL)], daemon.root)
            echo, attached = start_sessions(client, [ECHO_PROGRAM] * 2, daemon.root, tty=True)
            wait_until_started(client, [ticker, echo, attached])
            wait_until_printed(client, echo, b"READY")
            wait_until_printed(client, attached, b"READY")
            idle = run_probes(daemon, ticker, echo, attached, settings)
            writers = start_sessions(client, [session_program(ENDLESS)] * 2, daemon.root)
            wait_until_started(client, writers)
            time.sleep(WARMUP)
            process = psutil.Process(daemon.process.pid)
            bytes_before, cpu_before, started = stored_bytes(client, writers), cpu_seconds(process), time.perf_counter()
            loaded = run_probes(daemon, ticker, echo, attached, settings)
            elapsed = time.perf_counter() - started
            bytes_after, cpu_after = stored_bytes(client, writers), cpu_seconds(process)
            info = client.request("info")
            wal_bytes = wal_size(daemon)
        daemon.shutdown(timeout=300)
    except BaseException:
        print("slotd (load) log, last lines:", *daemon.log_tail(), sep="\n  ", file=sys.stderr)
        raise
    finally:
        daemon.stop()  # only if it failed: it, then what its sessions left
    ingested = (bytes_after - bytes_before) / elapsed
    return {
        "idle": idle,
        "load": loaded,
        "seconds": elapsed,
        "load_mb_per_s": ingested / 1e6,
        "load_lines_per_s": ingested / LINE_BYTES,
        "daemon_cpu_share": (cpu_after - cpu_before) / elapsed,
        "ingest_lag_at_end": info["ingest_lag"],
        "wal_bytes_at_end": wal_bytes,
    }


# -- 2. restart to READY ----------------------------------------------------------------


def build_database(path: Path, rows: int) -> dict:
    """Fill slotd's database with `rows` transcript rows of ended sessions, no daemon running."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    started = time.perf_counter()
    store = Store(path)  # slotd's schema, migrations and pragmas
    db = store.db
    # Building, not capturing: let SQLite checkpoint as it goes so the WAL stays small,
    # and skip the fsyncs. The daemon opens the file with its own settings later.
    db.pragma("wal_autocheckpoint", 10_000)
    db.pragma("synchronous", "OFF")
    now, ts = utc_now(), time.time()
    per_session = -(-rows // ENDED_SESSIONS)
    for number in range(ENDED_SESSIONS):
        count = min(per_session, rows - number * per_session)
        if count <= 0:
            break
        session_id = str(uuid.uuid4())
        # Ended now, not long ago: retention's max_age_days must not prune them mid-benchmark.
        store.create_session(
            Session(
                id=session_id,
                arrival=0,
                argv=["bench", "ended", str(number)],
                cwd="/",
                status="completed",
                queued_at=now,
                started_at=now,
                ended_at=now,
                exit_code=0,
                transcript_bytes=count * len(ROW_DATA),
            )
        )
        for first in range(1, count + 1, BUILD_ROWS_PER_TRANSACTION):
            last = min(count, first + BUILD_ROWS_PER_TRANSACTION - 1)
            with db:
                db.execute(BUILD_ROWS, (first, last, session_id, ts, ROW_DATA))
    db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    stored = db.execute("SELECT count(*) FROM transcript").get
    store.close()
    settle()
    return {"rows": stored, "seconds": time.perf_counter() - started, "bytes": path.stat().st_size}


class NotifyListener:
    """A datagram socket standing in for systemd's: notes when READY=1 arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(os.fspath(path))
        self.ready_at: float | None = None
        self.messages: list[str] = []
        self.thread: threading.Thread | None = None

    def listen(self, timeout: float) -> None:
        """Wait in a thread for the next READY=1, so nothing delays reading it."""
        self.ready_at = None
        self.sock.settimeout(timeout)
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        try:
            while True:
                data = self.sock.recv(4096)
                arrived = time.perf_counter()
                self.messages.append(data.decode(errors="replace"))
                if "READY=1" in data.decode(errors="replace").split("\n"):
                    self.ready_at = arrived
                    return
        except TimeoutError:
            return

    def wait(self) -> float | None:
        assert self.thread is not None
        self.thread.join()
        return self.ready_at

    def close(self) -> None:
        self.sock.close()


def wait_for_info(daemon: DaemonHandle, timeout: float = 30) -> float:
    """Poll the control socket every 5 ms until `info` answers; the perf_counter time it did."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if daemon.process.poll() is not None:
            raise RuntimeError(f"slotd exited with status {daemon.process.returncode} while starting")
        try:
            with daemon.client(timeout=5) as client:
                client.request("info")
                return time.perf_counter()
        except (DaemonUnavailable, ConnectionError):
            time.sleep(0.005)
    raise RuntimeError(f"slotd did not answer info within {timeout}s")


def python_start_seconds() -> float:
    """What the interpreter alone takes to start and import the daemon's modules: the floor."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import supervisor.daemon"], cwd=CHECKOUT, check=True)
    return time.perf_counter() - started


def measure_restart(workdir: Path, rows: int, restarts: int) -> dict:
    daemon = new_daemon(workdir / "restart")
    built = build_database(daemon.database, rows)
    notify = NotifyListener(daemon.root / "notify.sock")
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path))
    runs: list[dict] = []
    try:
        daemon.start(wait=False)
        daemon.wait_ready(timeout=30)
        with daemon.client() as client:
            ids = start_sessions(client, [SLEEP_PRINT] * LIVE_SESSIONS, daemon.root)
            before = wait_until_started(client, ids)
        for _ in range(restarts):
            daemon.kill9()
            settle()
            notify.listen(timeout=30)
            started = time.perf_counter()
            daemon.start(wait=False, env=env)
            info_at = wait_for_info(daemon)
            ready_at = notify.wait()
            with daemon.client() as client:
                after = {s["id"]: s for s in client.request("ps") if s["id"] in ids}
            reattached = sum(
                1
                for session_id in ids
                if after.get(session_id, {}).get("status") == "running"
                and after[session_id]["pid"] == before[session_id]["pid"]
            )
            runs.append(
                {
                    "ready_s": None if ready_at is None else ready_at - started,
                    "info_s": info_at - started,
                    "reattached": reattached,
                }
            )
        floor = python_start_seconds()
        daemon.shutdown(timeout=300)
    except BaseException:
        print("slotd (restart) log, last lines:", *daemon.log_tail(), sep="\n  ", file=sys.stderr)
        raise
    finally:
        daemon.stop()  # only if it failed: it, then what its sessions left
        notify.close()
    return {"database": built, "runs": runs, "python_import_s": floor, "live_sessions": LIVE_SESSIONS}


# -- 3. idle CPU ---------------------------------------------------------------------------


def measure_idle(workdir: Path, seconds: float) -> dict:
    daemon = new_daemon(workdir / "idle")
    try:
        daemon.start(wait=False)
        daemon.wait_ready(timeout=30)
        with daemon.client() as client:
            ids = start_sessions(client, [SLEEPER] * LIVE_SESSIONS, daemon.root)
            sessions = wait_until_started(client, ids)
        # Let start-up settle (the first idle checkpoint, the first retention pass).
        time.sleep(3.0)
        process = psutil.Process(daemon.process.pid)
        shims = [psutil.Process(s["shim_pid"]) for s in sessions.values()]
        cpu_before, switches_before = cpu_seconds(process), sum(process.num_ctx_switches())
        shims_before = sum(cpu_seconds(shim) for shim in shims)
        started = time.perf_counter()
        time.sleep(seconds)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(process) - cpu_before
        switches = sum(process.num_ctx_switches()) - switches_before
        shims_cpu = sum(cpu_seconds(shim) for shim in shims) - shims_before
        threads = process.num_threads()
        daemon.shutdown(timeout=300)
    except BaseException:
        print("slotd (idle) log, last lines:", *daemon.log_tail(), sep="\n  ", file=sys.stderr)
        raise
    finally:
        daemon.stop()  # only if it failed: it, then what its sessions left
    return {
        "seconds": elapsed,
        "daemon_cpu_s": cpu,
        "daemon_cpu_percent": 100 * cpu / elapsed,
        "daemon_wakeups_per_s": switches / elapsed,
        "daemon_threads": threads,
        "shims_cpu_percent": 100 * shims_cpu / elapsed,
    }


# -- the table ----------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def report(results: dict, errors: dict[str, str]) -> dict[str, bool]:
    """Print the table; return the verdict per bar."""
    passes: dict[str, bool] = {}
    print(
        f"latency benchmark (SPEC §8)  machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end"
    )
    if "load" in results:
        latency = results["load"]
        idle, load = latency["idle"], latency["load"]
        print(
            f"{'latency':<36}{'idle p50':>10}{'idle p99':>10}{'load p50':>10}{'load p99':>10}{'load max':>10}{'n':>6}"
            "   bar (load p99)"
        )
        for key, name, bar in (
            ("follow", "follow: line written -> client", FOLLOW_BAR),
            ("control", "ps round trip", CONTROL_BAR),
            ("echo", "keystroke -> echo (send, follow)", ECHO_BAR),
            ("attach", "keystroke -> echo (slotctl attach)", ECHO_BAR),
        ):
            passes[f"{key}_p99"] = load[key]["p99"] < bar
            print(
                f"{name:<36}{ms(idle[key]['p50'])}{ms(idle[key]['p99'])}{ms(load[key]['p50'])}{ms(load[key]['p99'])}"
                f"{ms(load[key]['max'])}{load[key]['n']:>6}   < {bar * 1000:.0f} ms  {verdict(passes[f'{key}_p99'])}"
            )
            if key == "follow":
                for part, label in (
                    ("write_to_shim", "write -> shim record"),
                    ("shim_to_client", "shim record -> client"),
                ):
                    print(
                        f"{'  of which ' + label:<36}{ms(idle[key][part]['p50'])}{ms(idle[key][part]['p99'])}"
                        f"{ms(load[key][part]['p50'])}{ms(load[key][part]['p99'])}{ms(load[key][part]['max'])}"
                    )
        print(
            f"  load average (1 min): idle {idle['loadavg_before']:.2f} -> {idle['loadavg_after']:.2f}, "
            f"load {load['loadavg_before']:.2f} -> {load['loadavg_after']:.2f}"
        )
        print(
            "  the daemon's event loop ran / waited for a core: "
            + ", ".join(
                f"{phase} {figures['loop_ran']:.2f} s / {figures['loop_waited']:.2f} s over {figures['seconds']:.1f} s"
                for phase, figures in (("idle", idle), ("load", load))
            )
        )
        print(
            f"  load: 2 writers ingested {latency['load_lines_per_s']:,.0f} lines/s ({latency['load_mb_per_s']:.1f} MB/s) "
            f"over {latency['seconds']:.1f} s; daemon CPU {latency['daemon_cpu_share']:.2f} cores"
        )
        print(
            f"  at the end: ingest lag {latency['ingest_lag_at_end']:.3f} s, WAL file {latency['wal_bytes_at_end'] / 1e6:,.0f} MB"
        )
        print(
            f"  follow: {idle['follow']['skipped_backlog_lines'] + load['follow']['skipped_backlog_lines']} backlog "
            f"lines left out, {idle['follow']['missing_lines'] + load['follow']['missing_lines']} lines missing "
            "between the first and last measured"
        )
    if "restart" in results:
        restart = results["restart"]
        runs, built = restart["runs"], restart["database"]
        readies = [run["ready_s"] for run in runs]
        ok = all(ready is not None and ready < READY_BAR for ready in readies)
        reattached_ok = all(run["reattached"] == restart["live_sessions"] for run in runs)
        passes["restart_ready"] = ok
        passes["restart_reattached"] = reattached_ok
        shown = ", ".join("none" if ready is None else f"{ready:.3f}" for ready in readies)
        worst = max((ready for ready in readies if ready is not None), default=float("nan"))
        print(
            f"restart: process start -> READY=1 ({built['rows']:,} rows, {restart['live_sessions']} live): "
            f"{shown} s; max {worst:.3f} s   bar < {READY_BAR:.0f} s  {verdict(ok)}"
        )
        infos = [run["info_s"] for run in runs]
        print(f"  process start -> info answers: {', '.join(f'{i:.3f}' for i in infos)} s; max {max(infos):.3f} s")
        print(
            f"  re-attached (running, same command pid): {', '.join(str(run['reattached']) for run in runs)} "
            f"of {restart['live_sessions']}   {verdict(reattached_ok)}"
        )
        print(
            f"  python start + import supervisor.daemon alone: {restart['python_import_s']:.3f} s; "
            f"database {built['bytes'] / 1e9:.2f} GB, built in {built['seconds']:.1f} s"
        )
    if "idle" in results:
        idle = results["idle"]
        passes["idle_cpu"] = idle["daemon_cpu_percent"] < IDLE_BAR
        print(
            f"idle: daemon CPU with {LIVE_SESSIONS} sleeping sessions over {idle['seconds']:.0f} s: "
            f"{idle['daemon_cpu_percent']:.3f} % of one core ({idle['daemon_cpu_s']:.3f} s)   bar < {IDLE_BAR} %  "
            f"{verdict(passes['idle_cpu'])}"
        )
        print(
            f"  daemon: {idle['daemon_wakeups_per_s']:.1f} context switches/s, {idle['daemon_threads']} threads; "
            f"shims together {idle['shims_cpu_percent']:.3f} % of one core"
        )
    for phase, error in errors.items():
        print(f"{phase}: NOT MEASURED: {error}")
    return passes


def main() -> int:
    clean_up_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a short run: " + ", ".join(f"{k}={v:,}" for k, v in QUICK.items())
    )
    parser.add_argument("--only", help=f"comma-separated phases to run ({', '.join(PHASES)}; default all)")
    parser.add_argument("--follow-lines", type=int, help=f"lines the follow measures (default {FULL['follow_lines']})")
    parser.add_argument("--ps-rounds", type=int, help=f"ps round trips (default {FULL['ps_rounds']})")
    parser.add_argument("--keystrokes", type=int, help=f"keystrokes echoed (default {FULL['keystrokes']})")
    parser.add_argument("--rows", type=int, help=f"stored transcript rows for the restart (default {FULL['rows']:,})")
    parser.add_argument("--restarts", type=int, help=f"timed restarts (default {FULL['restarts']})")
    parser.add_argument("--idle-seconds", type=float, help=f"idle measurement (default {FULL['idle_seconds']:.0f} s)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON to PATH")
    args = parser.parse_args()
    settings = {
        key: getattr(args, key) if getattr(args, key) is not None else value
        for key, value in (QUICK if args.quick else FULL).items()
    }
    phases = args.only.split(",") if args.only else list(PHASES)
    unknown = [phase for phase in phases if phase not in PHASES]
    if unknown:
        parser.error(f"unknown phase {', '.join(unknown)} (known: {', '.join(PHASES)})")

    workdir = Path(tempfile.mkdtemp(prefix="slotd-latency-"))
    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    started = time.perf_counter()
    try:
        for phase in PHASES:
            if phase not in phases:
                continue
            try:
                if phase == "load":
                    results[phase] = measure_latency(workdir, settings)
                elif phase == "restart":
                    results[phase] = measure_restart(workdir, settings["rows"], settings["restarts"])
                else:
                    results[phase] = measure_idle(workdir, settings["idle_seconds"])
            except Exception as error:
                errors[phase] = f"{type(error).__name__}: {error}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    passes = report(results, errors)
    print(f"wall time {time.perf_counter() - started:.1f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"settings": settings, "results": results, "errors": errors, "pass": passes}, indent=2) + "\n"
        )
    return 1 if errors or not passes.get("restart_reattached", True) else 0


if __name__ == "__main__":
    sys.exit(main())
