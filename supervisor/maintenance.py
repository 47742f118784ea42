"""The daemon's upkeep loops, one concern each: WAL checkpoints off the capture path,
retention, the systemd STATUS line (with the sessions whose output waits for disk
space), the systemd watchdog, and watching that the database file is still the one
opened."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import apsw
import outcome
import structlog
import trio

from supervisor import retention, systemd
from supervisor.config import Config
from supervisor.database import BackgroundThread, DatabaseWriter, ReaderPool
from supervisor.ingest import Ingestor
from supervisor.slots import SlotManager
from supervisor.store import Checkpointer, Reader, Store

log = structlog.get_logger()

# The WAL's bound. A passive checkpoint beside the commits runs every CHECKPOINT_INTERVAL
# (a light writer's WAL restarts that often) and as soon as a commit leaves the WAL past
# WAL_RESTART_BYTES; past WAL_HARD_BYTES the writer thread copies whatever is left, so
# the WAL restarts however fast the sessions write. The file then stays under
# WAL_HARD_BYTES plus what is committed while one round runs: under 100 MB (measured by
# tests/test_wal.py and bench/ingest.py). Only a reader that holds one read transaction
# open for the whole time (an outside sqlite3 shell, say) can keep it from restarting.
CHECKPOINT_INTERVAL = 0.5
WAL_RESTART_BYTES = 32 * 1024 * 1024
WAL_HARD_BYTES = 64 * 1024 * 1024
WRITER_PASS_BYTES = 8 * 1024 * 1024  # what the writer thread may be left to copy
WRITER_WAIT_MS = 50  # how long the writer thread waits for readers to let the WAL restart
BACKGROUND_PASSES = 3
ROUND_GAP = 0.05  # at least this long between two rounds, whatever the commits say
IDLE_SECONDS = 1.0  # no commit for this long: empty the WAL file altogether
CAP_INTERVAL = 1.0
PRUNE_INTERVAL = 60.0
STATUS_INTERVAL = 1.0
DATABASE_CHECK_INTERVAL = 1.0


async def status_text(config: Config, slots: SlotManager, readers: ReaderPool) -> str:
    """The STATUS= line: "2/3 slots busy, 1 queued"."""
    queued = await readers.run(Reader.count_with_status, ["queued"])
    draining = ", draining" if slots.queue.draining else ""
    blocked = sum(live.output_blocked is not None for live in slots.live)
    disk_full = f", {blocked} blocked: runtime disk full" if blocked else ""
    return f"{len(slots.live)}/{slots.live.slots} slots busy, {queued} queued{draining}{disk_full}"


async def checkpoint_loop(
    ingestor: Ingestor,
    writer: DatabaseWriter,
    checkpointer: Checkpointer,
    checkpoints: BackgroundThread,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep the WAL short without stalling capture.

    A passive checkpoint on a connection of its own copies frames beside the commits;
    once it has copied every frame, the writer's next transaction starts the WAL over
    from its beginning (and journal_size_limit cuts the file back). Under continuous
    commits it never quite catches up, so a second, short checkpoint on the writer
    thread, between two commits, copies the few frames left. When ingest is idle, a
    TRUNCATE checkpoint empties the file.

    The checkpoints run on their own background thread, `checkpoints`: copying the WAL
    is bulk work, as committing is.
    """
    store = writer.store
    restart_frames = WAL_RESTART_BYTES // store.page_size
    blocked = False
    failing: str | None = None
    task_status.started()
    while True:
        # On the timer, or at once when a commit leaves the WAL long.
        with trio.move_on_after(CHECKPOINT_INTERVAL):
            await ingestor.wait_committed()
            while store.wal_frames < restart_frames:
                await ingestor.wait_committed()
        if store.file_problem() is not None:
            # Never copy pages into a file that is no longer ours (or was emptied):
            # database_watch_loop stops the daemon, its WAL set aside.
            await trio.sleep(ROUND_GAP)
            continue
        idle = ingestor.lag() == 0 and time.monotonic() - ingestor.last_commit_at > IDLE_SECONDS
        try:
            if idle:
                if wal_file_bytes(store) > 0:
                    await checkpoints.run(checkpointer.truncate)
            elif (held_back := not await restart_wal(writer, ingestor, checkpointer, checkpoints)) != blocked:
                # Said once when it starts and once when it ends, not at every round.
                blocked = held_back
                wal_bytes = wal_file_bytes(store)
                if blocked:
                    log.warning("wal_restart_blocked", wal_bytes=wal_bytes, reason="a reader holds an old snapshot")
                else:
                    log.info("wal_restart_unblocked", wal_bytes=wal_bytes)
            failing = None
        except apsw.Error as error:
            # A full disk or an outside lock: the WAL waits, as the commits do; the
            # next round tries again. Said once, not every half second.
            if failing != str(error):
                log.warning("wal_checkpoint_failed", error=str(error), retry_in=CHECKPOINT_INTERVAL)
            failing = str(error)
        await trio.sleep(ROUND_GAP)


def wal_file_bytes(store: Store) -> int:
    """The size of the database's WAL file (0 when there is none)."""
    try:
        return os.stat(f"{store.path}-wal").st_size
    except FileNotFoundError:
        return 0


async def restart_wal(
    writer: DatabaseWriter, ingestor: Ingestor, checkpointer: Checkpointer, checkpoints: BackgroundThread
) -> bool:
    """Checkpoint the WAL beside the commits, and restart it from the writer thread
    once it is long; False if it is past WAL_HARD_BYTES and readers kept it from
    restarting."""
    page_size = writer.store.page_size
    hard = WAL_HARD_BYTES // page_size
    writer_pass = WRITER_PASS_BYTES // page_size
    # Beside the commits, as long as each pass leaves a sizeable remainder behind and
    # the WAL keeps within WAL_HARD_BYTES meanwhile (None: it did not).
    background: tuple[int, int] | None = None
    for _ in range(BACKGROUND_PASSES):
        background = await background_pass(writer, ingestor, checkpointer, checkpoints)
        if background is None or background[0] - background[1] <= writer_pass:
            break
    if background is not None:
        log_frames, done = background
        if log_frames < WAL_RESTART_BYTES // page_size:
            return True  # short: the writer's next transaction restarts it if the pass completed
        if log_frames - done > writer_pass and log_frames < hard:
            return True  # too much left to copy between two commits: try again shortly
    # Even after a complete background pass: the WAL restarts only when a write
    # transaction *begins* with every frame checkpointed and no reader on the WAL, and
    # under steady commits and reads that happens only when the writer itself restarts
    # it between two commits. Past the bound, the writer copies whatever is left.
    restarted = await writer.run(writer.store.restart_wal, WRITER_WAIT_MS)
    log.debug("wal_checkpoint", background=background, restarted=restarted)
    return restarted or (background is not None and background[0] < hard)


async def background_pass(
    writer: DatabaseWriter, ingestor: Ingestor, checkpointer: Checkpointer, checkpoints: BackgroundThread
) -> tuple[int, int] | None:
    """A passive checkpoint on the checkpoints thread: (frames in the WAL, frames
    copied); None if the WAL is past WAL_HARD_BYTES, at its start or because commits
    took it there while it ran (it is interrupted then). That thread yields the CPU to
    everything else, so under a full load one pass took a fifth of a second, while the
    commits (250 MB/s) took the WAL from 37 to 121 MB."""
    hard = WAL_HARD_BYTES // writer.store.page_size
    if writer.store.wal_frames >= hard:
        return None

    interrupted = False

    async def interrupt_past_bound() -> None:
        nonlocal interrupted
        while writer.store.wal_frames < hard:
            await ingestor.wait_committed()
        checkpointer.interrupt()
        interrupted = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(interrupt_past_bound)
        # Captured, not raised here: the nursery would wrap an error (a full disk) in an
        # exception group, which the checkpoint loop's `except apsw.Error` misses.
        result = await outcome.acapture(checkpoints.run, checkpointer.checkpoint)
        nursery.cancel_scope.cancel()
    try:
        passed = result.unwrap()
    except apsw.InterruptError:
        return None
    finally:
        if interrupted:  # perhaps after the pass had ended: the next must not meet it
            await checkpoints.run(checkpointer.forget_interrupt)
    return passed if writer.store.wal_frames < hard else None


async def retention_loop(
    config: Config, writer: DatabaseWriter, readers: ReaderPool, task_status=trio.TASK_STATUS_IGNORED
) -> None:
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


async def status_loop(
    config: Config, slots: SlotManager, readers: ReaderPool, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """Note the sessions whose shim waits for disk space, and keep systemd's STATUS= line current."""
    last = ""
    task_status.started()
    while True:
        await trio.sleep(STATUS_INTERVAL)
        slots.runner.note_blocked_spools()
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


async def database_watch_loop(
    store: Store, on_lost: Callable[[str], None], task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """Call on_lost(why) once the database path no longer names the file the store
    opened (deleted, replaced, emptied): SQLite would write on into it unawares."""
    task_status.started()
    # Nothing signals a file replaced under us (inotify would miss a rename of the
    # directory above): look every DATABASE_CHECK_INTERVAL.
    while (problem := store.file_problem()) is None:  # noqa: ASYNC110
        await trio.sleep(DATABASE_CHECK_INTERVAL)
    on_lost(problem)
