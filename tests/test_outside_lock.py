"""A write lock held by another process on slotd's database: reads go on, writes wait."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

from supervisor.client import RemoteError
from tests.harness import DaemonHandle, wait_for
from tests.helpers import LOCKER, py

LOCK_SECONDS = 3.0
COUNTER = "import time\nfor i in range(100000): print(i, flush=True); time.sleep(0.05)"


def test_reads_answer_within_100_ms_while_another_process_holds_the_write_lock(daemon: DaemonHandle) -> None:
    """While another process holds BEGIN EXCLUSIVE, info, ps, show and logs answer within 100 ms and a pause waits for the lock and succeeds."""
    session = daemon.start_session(py(COUNTER))
    session_id = session["id"]
    daemon.wait_status(session_id, "running")
    wait_for(lambda: daemon.request("show", session=session_id)["transcript"]["rows"] > 2, what="first rows")

    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(daemon.database), str(LOCK_SECONDS)], stdout=subprocess.PIPE
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline() == b"locked\n"
        locked_at = time.monotonic()
        paused: dict[str, Any] = {}

        def pause() -> None:
            started = time.monotonic()
            try:
                paused["result"] = daemon.request("pause", session=session_id)
            except RemoteError as error:
                paused["error"] = error
            paused["seconds"] = time.monotonic() - started

        # The writer meets the lock at its next flush (every 50 ms): give it time to.
        time.sleep(0.3)
        pauser = threading.Thread(target=pause)
        pauser.start()
        timings: list[tuple[str, float]] = []
        with daemon.client() as client:
            while time.monotonic() - locked_at < LOCK_SECONDS - 0.3:
                for command, args in (
                    ("info", {}),
                    ("ps", {}),
                    ("show", {"session": session_id}),
                    ("logs", {"session": session_id, "tail": 3}),
                ):
                    started = time.monotonic()
                    client.request(command, **args)
                    timings.append((command, time.monotonic() - started))
                time.sleep(0.05)
        assert locker.wait(10) == 0
        pauser.join(30)
    finally:
        if locker.poll() is None:
            locker.kill()
            locker.wait()
        assert locker.stdout is not None
        locker.stdout.close()

    slow = [(command, round(seconds, 3)) for command, seconds in timings if seconds >= 0.1]
    assert len(timings) >= 20 and not slow, f"{len(slow)} of {len(timings)} reads took 100 ms or more: {slow[:10]}"
    # The pause was refused clearly or done; either way within the lock plus the busy timeout.
    assert "result" in paused or paused["error"].code == "storage_error", paused
    assert paused["seconds"] < LOCK_SECONDS + 12
    if "result" in paused:
        daemon.wait_status(session_id, "paused")
        daemon.request("resume", session=session_id)
    # Once the lock is gone, what the session printed meanwhile is committed.
    rows_at_release = daemon.request("show", session=session_id)["transcript"]["rows"]
    wait_for(
        lambda: daemon.request("show", session=session_id)["transcript"]["rows"] > rows_at_release + 5,
        what="rows after the lock",
    )
    daemon.request("stop", session=session_id)
    daemon.wait_ended(session_id)
