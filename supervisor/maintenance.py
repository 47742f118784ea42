"""The daemon's upkeep loops, one concern each: WAL checkpoints off the capture path,
retention, reaping shims with the systemd STATUS line, and the systemd watchdog."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from supervisor import retention, systemd
from supervisor.config import Config
from supervisor.database import DatabaseWriter, ReaderPool
from supervisor.ingest import Ingestor
from supervisor.slots import SlotManager
from supervisor.store import Checkpointer, Reader

# A passive checkpoint runs once ingest goes idle, or when the WAL passes this size; while
# capture is saturated it waits for the larger size (a checkpoint beside it costs ~15 %).
CHECKPOINT_WAL_BYTES = 32 * 1024 * 1024
CHECKPOINT_WAL_BYTES_BUSY = 512 * 1024 * 1024
CHECKPOINT_INTERVAL = 1.0
CAP_INTERVAL = 1.0
PRUNE_INTERVAL = 60.0
STATUS_INTERVAL = 1.0


async def status_text(config: Config, slots: SlotManager, readers: ReaderPool) -> str:
    """The STATUS= line: "2/3 slots busy, 1 queued"."""
    queued = await readers.run(Reader.count_with_status, ["queued"])
    draining = ", draining" if slots.draining else ""
    return f"{len(slots.live)}/{config.slots} slots busy, {queued} queued{draining}"


async def checkpoint_loop(config: Config, ingestor: Ingestor, checkpointer: Checkpointer, task_status=trio.TASK_STATUS_IGNORED) -> None:
    wal = Path(f"{config.database}-wal")
    checkpointed_after = -1
    task_status.started()
    while True:
        await trio.sleep(CHECKPOINT_INTERVAL)
        try:
            wal_bytes = wal.stat().st_size
        except FileNotFoundError:
            continue
        idle = ingestor.lag() == 0 and time.monotonic() - ingestor.last_commit_at > 1.0
        limit = CHECKPOINT_WAL_BYTES_BUSY if ingestor.saturated() else CHECKPOINT_WAL_BYTES
        if wal_bytes > limit or (idle and wal_bytes and ingestor.rows_committed != checkpointed_after):
            # Its own connection and thread: commits go on beside it.
            await trio.to_thread.run_sync(checkpointer.checkpoint)
            checkpointed_after = ingestor.rows_committed


async def retention_loop(config: Config, writer: DatabaseWriter, task_status=trio.TASK_STATUS_IGNORED) -> None:
    next_prune = time.monotonic()
    task_status.started()
    while True:
        await trio.sleep(CAP_INTERVAL)
        await retention.enforce_session_cap(writer, config.retention)
        if time.monotonic() >= next_prune:
            await retention.enforce_age_and_budget(writer, config.retention)
            next_prune = time.monotonic() + PRUNE_INTERVAL


async def status_loop(config: Config, slots: SlotManager, readers: ReaderPool, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Reap shims that ended, and keep systemd's STATUS= line current."""
    last = ""
    task_status.started()
    while True:
        await trio.sleep(STATUS_INTERVAL)
        slots.reap_finished_shims()
        status = await status_text(config, slots, readers)
        if status != last:
            systemd.notify(f"STATUS={status}")
            last = status


async def watchdog_loop(writer: DatabaseWriter, interval: float, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """WATCHDOG=1 every interval, but only while the database writer progresses too.

    That this loop runs at all shows the event loop is alive; a writer stuck on one call
    for a whole watchdog period (a hung disk) stops the pings, and systemd restarts us.
    """
    task_status.started()
    while True:
        if writer.stalled_for() < 2 * interval:
            systemd.notify("WATCHDOG=1")
        await trio.sleep(interval)
