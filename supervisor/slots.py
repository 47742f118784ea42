"""The slots, in four parts built and started together: the table of live sessions,
the queue and its dispatcher (dispatch.py), the runner that spawns and follows each
session (runner.py), and the controls that act on them (controls.py).

At most `slots` sessions are live (running, paused or waiting_checkpoint) at once, each
in the lowest free slot; the rest wait in the queue by priority, then arrival.
"""

from __future__ import annotations

import trio

from supervisor.config import Config
from supervisor.controls import Controls
from supervisor.database import DatabaseWriter
from supervisor.dispatch import Dispatcher
from supervisor.ingest import Ingestor
from supervisor.live import LiveSessions
from supervisor.runner import SessionRunner


class SlotManager:
    """The live-session table (live), the queue (queue), the runner (runner) and the
    controls (controls): the daemon, its request handlers and recovery use these."""

    def __init__(self, config: Config, writer: DatabaseWriter, ingestor: Ingestor, session_umask: int = 0o022) -> None:
        self.live = LiveSessions(config.slots)
        self.runner = SessionRunner(config, writer, ingestor, self.live, session_umask)
        self.controls = Controls(config, writer, ingestor, self.live, self.runner)
        self.queue = Dispatcher(config, writer, ingestor, self.live, self.runner)
        self.runner.on_live = self.controls.watch_timeout

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the sessions, the stops under way and the dispatcher (idle until woken)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.runner.run)
            await nursery.start(self.controls.run)
            await nursery.start(self.queue.run)
            task_status.started()
