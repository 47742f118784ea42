"""The history benchmark (issue 8, scale of history): `slotctl ps -a` over many stored sessions.

    .venv/bin/python bench/history.py                    # 100,000 ended sessions
    .venv/bin/python bench/history.py --sessions 20000   # a quicker run

A database holding N ended sessions is built straight into slotd's schema with APSW (no
daemon running), then a real daemon is started on it and, for `slotctl ps -a` and
`slotctl ps --status completed` in turn:

- the wall time of the slotctl process, its stdout read to the end and its lines counted
  (one header, then one line per session: all N must be there);
- meanwhile, on a connection of its own, `info` round trips one after another: their
  count and the slowest (another client must not stall: bar 100 ms);
- the daemon's RSS (psutil, sampled every 20 ms): before, its peak during, and after.

It prints one table. A missed bar is reported, not an error; the exit status is non-zero
only if a listing missed sessions. Everything lives in a temporary directory removed at
the end; the daemon is stopped by its pid.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))
sys.path.insert(0, str(CHECKOUT / "bench"))

from latency import new_daemon  # noqa: E402

from supervisor.model import iso_from_unix, utc_now  # noqa: E402
from supervisor.store import Store  # noqa: E402
from tests.harness import DaemonHandle, clean_up_on_sigterm  # noqa: E402

INFO_BAR = 0.100  # s, the slowest info during a listing
RSS_INTERVAL = 0.02


def build_history(path: Path, sessions: int) -> float:
    """Store `sessions` ended sessions (a short argv, a label) with no daemon running; seconds taken."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    started = time.perf_counter()
    store = Store(path)
    now, first_end = utc_now(), time.time() - sessions
    # Ended in the last N seconds, one a second: retention's max_age_days must not prune them.
    rows = (
        (
            str(uuid.uuid4()),
            arrival,
            "completed" if arrival % 10 else "failed",
            '["make", "-C", "/srv/build", "test"]',
            "/srv",
            '{"job": "nightly"}',
            now,
            now,
            iso_from_unix(first_end + arrival),
            0 if arrival % 10 else 2,
        )
        for arrival in range(1, sessions + 1)
    )
    with store.write():
        store.db.executemany(
            "INSERT INTO sessions (id, arrival, status, argv, cwd, labels, queued_at, started_at, ended_at, exit_code) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    store.close()
    return time.perf_counter() - started


class InfoProbe(threading.Thread):
    """`info` round trips back to back on a connection of its own until stopped."""

    def __init__(self, daemon: DaemonHandle) -> None:
        super().__init__(daemon=True)
        self.client = daemon.client()
        self.latencies: list[float] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with self.client:
            while not self.stopping.is_set():
                started = time.perf_counter()
                self.client.request("info")
                self.latencies.append(time.perf_counter() - started)


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(RSS_INTERVAL):
            self.peak = max(self.peak, self.process.memory_info().rss)


def measure_listing(daemon: DaemonHandle, args: list[str]) -> dict:
    assert daemon.process is not None
    rss_before = psutil.Process(daemon.process.pid).memory_info().rss
    probe, sampler = InfoProbe(daemon), RssSampler(daemon.process.pid)
    probe.start()
    sampler.start()
    started = time.perf_counter()
    listing = subprocess.run(
        [sys.executable, "-m", "supervisor", "--socket", str(daemon.socket), "ps", *args],
        capture_output=True,
        cwd=CHECKOUT,
        check=True,
    )
    wall = time.perf_counter() - started
    probe.stopping.set()
    sampler.stopping.set()
    probe.join()
    sampler.join()
    return {
        "wall": wall,
        "lines": listing.stdout.count(b"\n") - 1,  # less the header
        "info_count": len(probe.latencies),
        "info_max": max(probe.latencies),
        "rss_before": rss_before,
        "rss_peak": sampler.peak,
        "rss_after": psutil.Process(daemon.process.pid).memory_info().rss,
    }


def main() -> int:
    clean_up_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000, help="ended sessions stored (default 100,000)")
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="slotd-history-"))
    daemon = new_daemon(workdir)
    try:
        built = build_history(workdir / "state" / "slotd.db", options.sessions)
        daemon.start()
        with daemon.client() as client:
            client.request("ps")  # the readers' connections are open and warm
        completed = sum(1 for arrival in range(1, options.sessions + 1) if arrival % 10)
        results = {
            "ps -a": (measure_listing(daemon, ["-a"]), options.sessions),
            "ps --status completed": (measure_listing(daemon, ["--status", "completed"]), completed),
        }
        daemon.shutdown()
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    mib = 1 << 20
    print(f"{options.sessions:,} ended sessions stored in {built:.1f} s")
    print(
        f"{'listing':<24}{'wall':>8}{'listed':>10}{'infos':>7}{'max info':>10}{'RSS before':>12}{'peak':>8}{'after':>8}  bar"
    )
    missing = False
    for name, (result, expected) in results.items():
        ok = result["info_max"] < INFO_BAR
        missing |= result["lines"] != expected
        print(
            f"{name:<24}{result['wall']:>7.2f}s{result['lines']:>10,}{result['info_count']:>7}"
            f"{result['info_max'] * 1000:>8.1f}ms{result['rss_before'] / mib:>9.0f}MiB{result['rss_peak'] / mib:>5.0f}MiB"
            f"{result['rss_after'] / mib:>5.0f}MiB  {'PASS' if ok else 'FAIL'} (max info < {INFO_BAR * 1000:.0f} ms)"
        )
    if missing:
        print("a listing missed sessions", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
