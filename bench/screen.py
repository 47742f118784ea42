"""The screen benchmark (issue 10): what drawing a tty session's current screen costs,
replayed from its last full redraw (what slotd does) or emulated (what it chose not to).

    .venv/bin/python bench/screen.py                 # 20 MB of output per session
    .venv/bin/python bench/screen.py --megabytes 100

A real daemon runs two tty sessions that print ``--megabytes`` of coloured 100-byte
lines as fast as their terminal takes them, then wait:

- ``lines``: nothing but lines, so the screen is replayed from the first line that
  begins in the last 1 MiB (the worst case: the whole window is sent);
- ``frames``: a full-screen program's output: every 24 lines, cursor home and a clear,
  so the replay starts at the last clear.

For each, the ``screen`` request's round trip (p50 and max of 20) and the bytes it sent.
Then the alternative: the same output fed to a terminal emulator held per session, pyte
(``pip install pyte``; skipped if it is not installed), in MB/s of one core: the rate a
daemon would have to keep up with for every byte of every tty session. Everything lives
in a temporary directory that is removed at the end, and every process it started is
ended by its recorded pid.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))
sys.path.insert(0, str(CHECKOUT / "bench"))

from latency import new_daemon, percentile  # noqa: E402

from supervisor.protocol import decode_data  # noqa: E402
from tests.harness import DaemonHandle, clean_up_on_sigterm, wait_for  # noqa: E402

ROUNDS = 20
# Prints `megabytes` of 100-byte coloured lines (a clear every 24 lines if `frames`),
# then says "done" and waits to be measured.
PRINTER = """
import sys, time
megabytes, frames = int(sys.argv[1]), sys.argv[2] == "frames"
line = "\\x1b[32m%08d\\x1b[0m " + "x" * 81 + "\\n"
out = sys.stdout
for i in range(megabytes * 10_000):
    if frames and i % 24 == 0:
        out.write("\\x1b[H\\x1b[2J")
    out.write(line % i)
out.write("done\\n")
out.flush()
time.sleep(3600)
"""


def printed_all(daemon: DaemonHandle, session_id: str, megabytes: int) -> bool:
    """The session's output is all stored: its size stopped growing past what it prints."""
    stored = daemon.request("show", session=session_id)["transcript_bytes"]
    if stored < megabytes * 1_000_000:
        return False
    time.sleep(0.5)
    return daemon.request("show", session=session_id)["transcript_bytes"] == stored


def measure_screen(daemon: DaemonHandle, session_id: str) -> dict:
    times, size = [], 0
    with daemon.client() as client:
        for _ in range(ROUNDS):
            started = time.perf_counter()
            screen = client.request("screen", session=session_id)
            times.append(time.perf_counter() - started)
            size = len(decode_data(screen))
    return {"p50": percentile(times, 50), "max": max(times), "bytes": size}


def pyte_rate(output: bytes) -> float | None:
    """MB/s of one core for pyte to take this output, or None without pyte."""
    try:
        import pyte  # type: ignore[import-not-found]
    except ImportError:
        return None
    screen = pyte.Screen(80, 24)
    stream = pyte.ByteStream(screen)
    sample = output[: 4 << 20]
    started = time.process_time()
    stream.feed(sample)
    return len(sample) / (time.process_time() - started) / 1e6


def main() -> int:
    clean_up_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=20, help="output of each session (default 20)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="slotd-screen-"))
    daemon = new_daemon(workdir)
    results = {}
    try:
        daemon.start()
        sessions = {
            kind: daemon.start_session(
                [sys.executable, "-c", PRINTER, str(args.megabytes), kind], tty=True, tty_cols=120, tty_rows=24
            )["id"]
            for kind in ("lines", "frames")
        }
        for kind, session_id in sessions.items():
            wait_for(
                lambda session_id=session_id: printed_all(daemon, session_id, args.megabytes),
                timeout=600,
                interval=0.5,
                what=f"the {kind} session to print its output",
            )
            results[kind] = measure_screen(daemon, session_id)
        output = daemon.stdout_bytes(sessions["lines"], ("tty",))
        rate = pyte_rate(output)
        daemon.shutdown()
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"screen of a tty session after {args.megabytes} MB of output ({ROUNDS} requests each)")
    print(f"{'output':<10}{'p50':>10}{'max':>10}{'sent':>12}")
    for kind, figures in results.items():
        print(f"{kind:<10}{figures['p50'] * 1000:>8.1f}ms{figures['max'] * 1000:>8.1f}ms{figures['bytes']:>12,}")
    if rate is None:
        print("pyte: not installed (pip install pyte) -- no emulator figure")
    else:
        print(f"pyte, fed the same output: {rate:.2f} MB/s of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
