"""The CPU-pressure benchmark (issue 10, item 4): how fast the daemon answers while its
sessions take every core.

    .venv/bin/python bench/cpu_pressure.py                     # sessions at the default nice
    .venv/bin/python bench/cpu_pressure.py --session-nice 0    # sessions as urgent as the daemon
    .venv/bin/python bench/cpu_pressure.py --writers           # hogs that also print at full speed
    .venv/bin/python bench/cpu_pressure.py --hogs 4 --rounds 500 --json out.json

A real daemon (``slots`` = the number of hogs) is measured twice, in one run:

1. idle: no session runs;
2. pressure: ``--hogs`` sessions (default 4, twice the cores of the 2-core machine) each
   run ``while True: pass``, so the CPU is saturated; with ``--writers`` they print
   100-byte lines as fast as they can instead (bench/ingest.py's generator), so their
   shims and the daemon's ingest are busy too.

In each, on one persistent connection, ``ps`` and ``info`` round trips alternate, one
every 10 ms (``--rounds`` of each), and their p50, p99 and max are printed side by side.
Beside them, from the kernel's schedstat (``/proc/PID/task/*/schedstat``, every thread
of the daemon): the CPU time the daemon ran and the time its threads waited for a core
while runnable, over the phase. The wait is what a lower priority for sessions cuts, and
it moves less with the rest of the machine than a p99 does.
The hogs' nice values as the kernel reports them (``/proc/PID/stat``, and the autogroup's
from ``/proc/PID/autogroup``) are printed too, so the table says what was measured.

``--session-nice N`` writes ``session_nice = N`` into the daemon's configuration; without
it the daemon's default applies. Comparing ``--session-nice 0`` (every session as urgent
as the daemon, as before sessions were niced) with the default shows what the lower
priority buys. On a shared machine the pressure figures move with whatever else runs.
Percentiles are nearest-rank. Everything lives in a temporary directory that is removed
at the end, and every daemon and session it started is ended by its recorded pid.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))
sys.path.insert(0, str(CHECKOUT / "bench"))

from ingest import session_program  # noqa: E402
from latency import ENDLESS, new_daemon, summary, wait_until_started  # noqa: E402

from tests.harness import DaemonHandle, clean_up_on_sigterm  # noqa: E402

HOG = "while True: pass"
REQUEST_INTERVAL = 0.010  # s between round trips, as bench/latency.py's ps probe
# Let the scheduler reach its steady state (the hogs' vruntime spread) before measuring.
WARMUP = 2.0


def round_trips(daemon: DaemonHandle, rounds: int) -> dict[str, list[float]]:
    """`ps` and `info` round trips, alternating, one every REQUEST_INTERVAL."""
    latencies: dict[str, list[float]] = {"ps": [], "info": []}
    with daemon.client() as client:
        due = time.perf_counter()
        for _ in range(rounds):
            for command, values in latencies.items():
                started = time.perf_counter()
                client.request(command)
                values.append(time.perf_counter() - started)
                due += REQUEST_INTERVAL
                time.sleep(max(0.0, due - time.perf_counter()))
    return latencies


def schedstat(pid: int) -> tuple[float, float]:
    """Seconds the process's threads (those alive now) ran, and waited runnable for a core."""
    ran = waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "schedstat").read_text().split()
        except OSError:
            continue  # a thread that ended meanwhile
        ran += int(fields[0])
        waited += int(fields[1])
    return ran / 1e9, waited / 1e9


def measured(daemon: DaemonHandle, rounds: int) -> dict:
    """A phase's round trips, and the daemon's CPU and wait for a core over it."""
    pid = daemon.process.pid
    ran, waited = schedstat(pid)
    started = time.perf_counter()
    figures: dict = {name: summary(values) for name, values in round_trips(daemon, rounds).items()}
    ran_after, waited_after = schedstat(pid)
    figures["seconds"] = time.perf_counter() - started
    figures["daemon_ran"] = ran_after - ran
    figures["daemon_waited"] = waited_after - waited
    return figures


def kernel_nice(pid: int) -> tuple[int, str]:
    """A process's nice value (/proc/PID/stat's 19th field) and its autogroup line."""
    nice = psutil.Process(pid).nice()
    try:
        autogroup = Path(f"/proc/{pid}/autogroup").read_text().strip()
    except OSError as error:
        autogroup = f"unreadable ({error.strerror})"
    return nice, autogroup


def measure(workdir: Path, program: str, hogs: int, rounds: int, session_nice: int | None) -> dict:
    daemon = new_daemon(workdir)
    daemon.settings["slots"] = hogs
    if session_nice is not None:
        daemon.settings["session_nice"] = session_nice
    daemon.write_config()
    try:
        daemon.start()
        results: dict = {"idle": measured(daemon, rounds)}
        with daemon.client() as client:
            ids = [
                client.request("start", argv=[sys.executable, "-c", program], cwd=str(workdir))["id"]
                for _ in range(hogs)
            ]
            sessions = wait_until_started(client, ids)
        time.sleep(WARMUP)
        results["pressure"] = measured(daemon, rounds)
        results["hogs"] = [kernel_nice(session["pid"]) for session in sessions.values()]
        results["daemon"] = kernel_nice(daemon.process.pid)
        results["load_average"] = os.getloadavg()[0]
        daemon.shutdown(timeout=60)
        return results
    except BaseException:
        print("slotd log, last lines:", *daemon.log_tail(), sep="\n  ", file=sys.stderr)
        raise
    finally:
        daemon.stop()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.2f} ms"


def report(results: dict, hogs: int, writers: bool, session_nice: int | None) -> None:
    configured = "the default" if session_nice is None else str(session_nice)
    kind = "full-speed writer" if writers else "CPU-hog"
    print(f"cpu pressure: {hogs} {kind} sessions on {os.cpu_count()} cores, session_nice = {configured}")
    daemon_nice, daemon_group = results["daemon"]
    print(f"  daemon: nice {daemon_nice}, {daemon_group}")
    for nice, group in sorted(set(map(tuple, results["hogs"]))):
        print(f"  hog sessions: nice {nice}, {group}")
    print(f"{'round trip':<24}{'p50':>12}{'p99':>12}{'max':>12}{'n':>6}")
    for phase in ("idle", "pressure"):
        for command in ("ps", "info"):
            figures = results[phase][command]
            print(
                f"{command + ' (' + phase + ')':<24}{ms(figures['p50'])}{ms(figures['p99'])}{ms(figures['max'])}"
                f"{figures['n']:>6}"
            )
    for phase in ("idle", "pressure"):
        figures = results[phase]
        print(
            f"  daemon, {phase}: ran {figures['daemon_ran']:.2f} s, waited for a core {figures['daemon_waited']:.2f} s "
            f"over {figures['seconds']:.1f} s"
        )
    print(f"  load average at the end: {results['load_average']:.2f}")


def main() -> int:
    clean_up_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hogs", type=int, default=4, help="CPU-hog sessions (and slots) (default 4)")
    parser.add_argument("--writers", action="store_true", help="hogs that print 100-byte lines at full speed")
    parser.add_argument("--rounds", type=int, default=500, help="round trips of each command per phase (default 500)")
    parser.add_argument("--session-nice", type=int, help="the daemon's session_nice (default: its own default)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON to PATH")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="slotd-cpu-pressure-"))
    try:
        program = session_program(ENDLESS) if args.writers else HOG
        results = measure(workdir, program, args.hogs, args.rounds, args.session_nice)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, args.hogs, args.writers, args.session_nice)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
