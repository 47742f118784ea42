"""The session runner's shim reaper, on real child processes."""

from __future__ import annotations

import os
import subprocess
import sys

import trio

from supervisor.runner import ShimReaper
from tests.harness import DEADLINE


def has_proc_entry(pid: int) -> bool:
    """True while the process exists, a zombie included (reaping removes its entry)."""
    return os.path.exists(f"/proc/{pid}")


async def test_a_shim_that_exits_after_its_session_ended_is_reaped_by_the_reaper_loop():
    """A shim that exits after its session's task stopped waiting for it is reaped by the runner's reaper loop: no zombie stays."""
    shim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    reaper = ShimReaper()
    reaper.add("session", shim)
    async with trio.open_nursery() as nursery:
        await nursery.start(reaper.run)
        with trio.fail_after(DEADLINE):
            while has_proc_entry(shim.pid):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert shim.returncode == 0
