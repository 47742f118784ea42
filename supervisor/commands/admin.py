"""Handlers about the daemon itself: drain, undrain, info, shutdown."""

from __future__ import annotations

import os
import time
from typing import Any

from supervisor import __version__
from supervisor.commands.context import CommandContext, Emit
from supervisor.diskspace import free_bytes
from supervisor.model import (
    Status,
)
from supervisor.protocol import (
    DrainRequest,
    InfoRequest,
    ShutdownRequest,
    SlotsRequest,
    UndrainRequest,
)
from supervisor.store import Reader


class DaemonCommands(CommandContext):
    """Handlers about the daemon itself: drain, undrain, info, shutdown."""

    async def cmd_drain(self, request: DrainRequest, emit: Emit) -> Any:
        await self.slots.queue.set_draining(True)
        return await self.cmd_info(InfoRequest(), emit)

    async def cmd_undrain(self, request: UndrainRequest, emit: Emit) -> Any:
        await self.slots.queue.set_draining(False)
        return await self.cmd_info(InfoRequest(), emit)

    async def cmd_slots(self, request: SlotsRequest, emit: Emit) -> Any:
        await self.slots.queue.set_slots(request.count)
        return await self.cmd_info(InfoRequest(), emit)

    async def cmd_info(self, request: InfoRequest, emit: Emit) -> Any:
        queued = await self.readers.run(Reader.count_with_status, [Status.QUEUED])
        db_bytes = 0
        for suffix in ("", "-wal"):
            try:
                db_bytes += os.stat(f"{self.config.database}{suffix}").st_size
            except FileNotFoundError:
                pass
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime": round(time.monotonic() - self.started_monotonic, 3),
            "slots": self.slots.live.slots,
            "configured_slots": self.config.slots,
            "busy": len(self.slots.live),
            "live": [
                {"slot": live.slot, "session": live.id, "status": live.status, "output_blocked": live.output_note()}
                for live in self.slots.live.by_slot()
            ],
            "queued": queued,
            "draining": self.slots.queue.draining,
            "ingest_lag": round(self.ingestor.lag(), 3),
            "rows_committed": self.ingestor.rows_committed,
            "connections": self.connections,
            "database": str(self.config.database),
            "database_bytes": db_bytes,
            "socket": str(self.config.socket),
            "state_dir": str(self.config.state_dir),
            "runtime_dir": str(self.config.runtime_dir),
            "runtime_dir_free_bytes": free_bytes(self.config.runtime_dir),
            "config": str(self.config.source) if self.config.source else None,
            "on_shutdown": self.config.on_shutdown,
        }

    async def cmd_shutdown(self, request: ShutdownRequest, emit: Emit) -> Any:
        mode = request.mode or self.config.on_shutdown
        self.request_shutdown(mode)
        return {"shutting_down": True, "mode": mode}
