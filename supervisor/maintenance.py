"""The daemon's upkeep loops, one concern each: WAL checkpoints off the capture path,
retention, reaping shims with the systemd STATUS line, the systemd watchdog, and
watching that the database file is still the one opened."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
import trio

from supervisor import retention, systemd
from supervisor.config import Config
from supervisor.database import DatabaseWriter, ReaderPool
from supervisor.ingest import Ingestor
from supervisor.slots import SlotManager
from supervisor.store import Checkpointer, Reader, Store

log = structlog.get_logger()

# The WAL is checkpointed to completion (and restarted) once this much was committed
# since the last time, or when ingest goes idle.
CHECKPOINT_WAL_BYTES = 64 * 1024 * 1024
BACKGROUND_PASSES = 3
WRITER_PASS_FRAMES = 8192  # what the writer thread may be left to copy (32 MiB)
WAL_HARD_FRAMES = 65536  # past 256 MiB of WAL the writer copies whatever is left
CHECKPOINT_INTERVAL = 0.5
CAP_INTERVAL = 1.0
PRUNE_INTERVAL = 60.0
STATUS_INTERVAL = 1.0
DATABASE_CHECK_INTERVAL = 1.0


async def status_text(config: Config, slots: SlotManager, readers: ReaderPool) -> str:
    """The STATUS= line: "2/3 slots busy, 1 queued"."""
    queued = await readers.run(Reader.count_with_status, ["queued"])
    draining = ", draining" if slots.draining else ""
    return f"{len(slots.live)}/{config.slots} slots busy, {queued} queued{draining}"


async def checkpoint_loop(
    ingestor: Ingestor, writer: DatabaseWriter, checkpointer: Checkpointer, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """Keep the WAL short without stalling capture.

    A passive checkpoint on a connection of its own copies frames beside the commits;
    under continuous commits it never quite catches up, so the WAL would only grow. A
    second, short checkpoint on the writer thread, between two commits, then copies the
    few frames left: complete, so the next commit restarts the WAL (and
    journal_size_limit trims the file).
    """
    checkpointed_at = -1  # ingestor.bytes_committed when the WAL was last checkpointed whole
    task_status.started()
    while True:
        await trio.sleep(CHECKPOINT_INTERVAL)
        grown = ingestor.bytes_committed - checkpointed_at
        idle = ingestor.lag() == 0 and time.monotonic() - ingestor.last_commit_at > 1.0
        if grown == 0 or not (idle or grown > CHECKPOINT_WAL_BYTES):
            continue
        committed = ingestor.bytes_committed
        # Beside the commits, as long as each pass leaves a sizeable remainder behind.
        for _ in range(BACKGROUND_PASSES):
            log_frames, done = await trio.to_thread.run_sync(checkpointer.checkpoint)
            if log_frames - done <= WRITER_PASS_FRAMES:
                break
        background = (log_frames, done)
        if log_frames - done > WRITER_PASS_FRAMES and log_frames < WAL_HARD_FRAMES:
            continue  # too much left to copy between two commits: try again shortly
        # Even after a complete background pass: the WAL restarts only when a write
        # transaction *begins* with every frame checkpointed, and under steady commits
        # that happens only right after a checkpoint run between two of them.
        committed = ingestor.bytes_committed
        log_frames, done = await writer.run(writer.store.checkpoint)
        log.debug("wal_checkpoint", background=background, writer=(log_frames, done), complete=done == log_frames)
        if done == log_frames:
            checkpointed_at = committed


async def retention_loop(config: Config, writer: DatabaseWriter, readers: ReaderPool, task_status=trio.TASK_STATUS_IGNORED) -> None:
    next_prune = time.monotonic()
    task_status.started()
    while True:
        await trio.sleep(CAP_INTERVAL)
        if writer.store.file_problem() is not None:
            continue  # pruning a database nobody will read again: database_watch_loop stops us
        await retention.enforce_session_cap(writer, readers, config.retention)
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


async def database_watch_loop(store: Store, on_lost: Callable[[str], None], task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Call on_lost(why) once the database path no longer names the file the store
    opened (deleted, replaced, emptied): SQLite would write on into it unawares."""
    task_status.started()
    while (problem := store.file_problem()) is None:
        await trio.sleep(DATABASE_CHECK_INTERVAL)
    on_lost(problem)
