"""How the shim spends the spool's waits for room.

SpoolWriter (spool.py) waits when the disk is full, or when the daemon has fallen
behind by max_segments segments. Meanwhile the shim reads nothing, so its command
blocks once its pipes are full. A full disk shows in the shim's process name, for the
daemon; and whatever the wait, the shim reaps its command if that exits, so a stop
never waits for room.
"""

from __future__ import annotations

import os
import select
import time

from supervisor import linux, spool
from supervisor.shim.command import Command


class SpoolWait:
    """The writer's on_blocked and pause, for one session's command."""

    def __init__(self, command: Command) -> None:
        self.command = command
        self.name = linux.process_name(os.getpid()) or "python3"

    def on_spool_blocked(self, blocked: bool) -> None:
        """Tell the daemon that the spool's disk is full, or has room again.

        By the shim's process name, which the daemon reads from /proc/PID/comm. The disk
        that refuses the spool may hold everything else too, so the message must need
        none of it: a marker file would fail, or take the last block, exactly when it is
        needed. The name costs no disk, only this process can set it, and it is still
        there for a daemon that restarts meanwhile (and plain for `ps`). What /proc
        shows otherwise (wchan, the sleeping state) cannot tell this wait from any other.
        """
        linux.set_own_name(spool.NO_SPACE_NAME if blocked else self.name)

    def wait_for_spool(self, seconds: float) -> None:
        """Spend a wait for room in the spool (a full disk, a daemon behind) reaping the
        command if it exits meanwhile.

        Reaping must not wait for writing: else an exited command stays a zombie, which
        no signal ends, for as long as the disk is full, and a stop waits with it.
        Its exit status waits in this process until the spool can take it.
        """
        command = self.command
        if command.exited_at is None and command.pidfd is not None:
            ready, _, _ = select.select([command.pidfd], [], [], seconds)
            if ready:
                command.command_exited()
            return
        if command.exited_at is not None:
            command.kill_group_when_due()
        time.sleep(seconds)
