"""Spool to database: batched transactions, exactly once.

Every transcript row and every change to a session's record goes through one Ingestor.
It assigns sequence numbers, collects a batch, and commits it in one transaction per
flush (every flush_interval, or sooner when the batch is full or someone must know the
batch is durable). Each batch also stores the spool position it reached, so after a crash
ingest resumes where the last commit left off: no row lost, none twice, no gap.

Followers do not wait for the commit: a row read from a spool is theirs as soon as it is
numbered (livefeed.py says why it can never change after that).
"""

from __future__ import annotations

import time
from pathlib import Path

import apsw
import structlog
import trio

from supervisor import spool
from supervisor.database import DatabaseWriter
from supervisor.livefeed import LiveFeed
from supervisor.store import Batch, Row

log = structlog.get_logger()


class Ingestor:
    """Collects rows and session changes into batches and commits each in one transaction."""

    def __init__(self, writer: DatabaseWriter, flush_interval: float, batch_max_bytes: int) -> None:
        self.writer = writer
        self.flush_interval = flush_interval
        self.batch_max_bytes = batch_max_bytes
        self._batch = Batch()
        self._next_seq: dict[str, int] = {}
        self._spool_dirs: dict[str, Path] = {}
        # A session may hold this much of the open batch (data and per-row cost, see
        # store.row_cost) before it must wait for a flush: a busy session is held back
        # without holding back a quiet one.
        self.session_share = max(1, batch_max_bytes // 2)
        self._has_work = trio.Event()
        self._urgent = trio.Event()
        self._flushed = trio.Event()
        self._open_generation = 0
        self._committed_generation = -1
        self._committed = trio.Event()
        self._session_changed: dict[str, trio.Event] = {}
        # Per session, how often its record may have changed (see record_changes), and
        # the event its next change sets (see record_event).
        self._record_changes: dict[str, int] = {}
        self._record_changed: dict[str, trio.Event] = {}
        self.live_feed = LiveFeed()
        # Sessions whose spool is read again after a restart -> the rows the daemon wrote
        # itself meanwhile, (stream, data, ts), numbered once that is done (see replay).
        self._replaying: dict[str, list[tuple[str, bytes, float]]] = {}
        self.rows_committed = 0
        self.bytes_committed = 0
        self.last_commit_at = time.monotonic()
        self.oldest_pending_since: float | None = None

    # -- building the batch ----------------------------------------------------------

    def register(self, session_id: str, last_seq: int) -> None:
        """Start numbering a session's rows after last_seq (its highest committed)."""
        self._next_seq.setdefault(session_id, last_seq + 1)
        self.live_feed.register(session_id, last_seq)

    def is_registered(self, session_id: str) -> bool:
        return session_id in self._next_seq

    def forget(self, session_id: str) -> None:
        """The session is deleted: stop numbering it, and wake whoever follows it."""
        self._next_seq.pop(session_id, None)
        self._spool_dirs.pop(session_id, None)
        self._replaying.pop(session_id, None)
        self._record_changes.pop(session_id, None)
        self.live_feed.forget(session_id)
        self._wake_followers({session_id})
        self._wake_record_waiters(session_id)

    def append(self, session_id: str, stream: str, data: bytes, ts: float | None = None) -> int | None:
        """A row the daemon writes itself (a system note): followers get it once it is
        committed. Returns its seq, or None while the session's spool is replayed: then
        it is numbered once that is done."""
        ts = time.time() if ts is None else ts
        if (waiting := self._replaying.get(session_id)) is not None:
            waiting.append((stream, data, ts))
            return None
        return self._add(Row(session_id, self._number(session_id), ts, stream, data), from_spool=False)

    def append_read(self, session_id: str, stream: str, data: bytes, ts: float) -> int:
        """A row read from the session's spool: followers may get it at once."""
        return self._add(Row(session_id, self._number(session_id), ts, stream, data), from_spool=True)

    def replay(self, session_id: str) -> None:
        """The session's spool is about to be read again from its committed position (a
        restart): its rows must take the numbers the daemon before gave them, which
        followers may have been sent. So rows the daemon writes itself meanwhile wait
        (and take no number) until replayed() says the spool is read past where it ended
        then."""
        self._replaying.setdefault(session_id, [])

    def replayed(self, session_id: str) -> None:
        """The replay is done (or was never begun): number the rows that waited for it."""
        for stream, data, ts in self._replaying.pop(session_id, ()):
            self._add(Row(session_id, self._number(session_id), ts, stream, data), from_spool=False)

    def _number(self, session_id: str) -> int:
        seq = self._next_seq[session_id]
        self._next_seq[session_id] = seq + 1
        return seq

    def _add(self, row: Row, from_spool: bool) -> int:
        self._batch.add_row(row)
        self._mark_work()
        if self.live_feed.add(row, from_spool):
            self._wake_followers({row.session_id})
        return row.seq

    def set_position(self, session_id: str, position: spool.Position, spool_dir: Path) -> None:
        self._batch.positions[session_id] = (position.segment, position.offset)
        self._spool_dirs[session_id] = spool_dir
        self._mark_work()

    def update(self, session_id: str, **columns) -> None:
        self._batch.update(session_id, **columns)
        self._mark_work()
        if "status" in columns:
            # A session's status is what clients wait on (`wait`, `run`, a follower at
            # its end): it goes now, not at the next flush_interval.
            self._urgent.set()

    def _mark_work(self) -> None:
        if self.oldest_pending_since is None:
            self.oldest_pending_since = time.monotonic()
        self._has_work.set()
        if self._batch.cost >= self.batch_max_bytes:
            self._urgent.set()

    # -- waiting ---------------------------------------------------------------------

    async def wait_for_room(self, session_id: str) -> None:
        """Back-pressure: wait while this session holds its share of the open batch."""
        while self._batch.session_cost.get(session_id, 0) >= self.session_share:
            self._urgent.set()
            await self._flushed.wait()

    async def commit_now(self) -> None:
        """Return once everything added so far is committed."""
        target = self._open_generation
        self._has_work.set()
        self._urgent.set()
        while self._committed_generation < target:
            await self._committed.wait()

    async def wait_committed(self) -> None:
        """Wait for the next successful commit (of any session)."""
        await self._committed.wait()

    def session_event(self, session_id: str) -> trio.Event:
        """Set by the next row of this session followers may get, by the next commit
        that changes it, or by its deletion: take it before reading, wait on it after,
        and no change slips in between."""
        return self._session_changed.setdefault(session_id, trio.Event())

    def notify_changed(self, session_id: str) -> None:
        """A change made outside the batch (cancel): wake who follows the session."""
        self._note_record_changed(session_id)
        self._wake_followers({session_id})

    def record_changes(self, session_id: str) -> int:
        """A count that moves whenever the session's record may have changed (a commit
        that updates it, a cancel); the rows committed with it do not move it. A
        follower that has sent every committed row and sees it where it was when it
        last read the session has no reason to read the database again: commits of
        its rows alone, or of other sessions, are no news to it. (A deleted session is
        no longer in the live feed, which sends its followers to the database.)"""
        return self._record_changes.get(session_id, 0)

    def record_event(self, session_id: str) -> trio.Event:
        """Set by the next change of the session's record: a commit that updates it, a
        change made outside the batches (a cancel), its deletion; not by its rows. Take
        it before reading the session, wait on it after, and no change slips in between."""
        return self._record_changed.setdefault(session_id, trio.Event())

    def _note_record_changed(self, session_id: str) -> None:
        if session_id in self._next_seq:  # registered: forget() drops the count again
            self._record_changes[session_id] = self._record_changes.get(session_id, 0) + 1
        self._wake_record_waiters(session_id)

    def _wake_record_waiters(self, session_id: str) -> None:
        event = self._record_changed.pop(session_id, None)
        if event is not None:
            event.set()

    def _wake_followers(self, session_ids: set[str]) -> None:
        for session_id in session_ids:
            event = self._session_changed.pop(session_id, None)
            if event is not None:
                event.set()

    def lag(self) -> float:
        """Seconds the oldest uncommitted change has waited."""
        if self.oldest_pending_since is None:
            return 0.0
        return time.monotonic() - self.oldest_pending_since

    # -- flushing --------------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self._has_work.wait()
                with trio.move_on_after(self.flush_interval):
                    await self._urgent.wait()
                await self.flush()
        finally:
            # Whatever was read is committed before the daemon goes: SIGTERM loses nothing.
            with trio.CancelScope(shield=True), trio.move_on_after(30):
                while self._batch:
                    if not await self.flush():
                        break

    async def flush(self) -> bool:
        """Commit the open batch; on a storage error keep it for the next try."""
        batch, generation = self._batch, self._open_generation
        self._batch = Batch()
        self._open_generation += 1
        self._has_work = trio.Event()
        self._urgent = trio.Event()
        pending_since, self.oldest_pending_since = self.oldest_pending_since, None
        flushed, self._flushed = self._flushed, trio.Event()
        flushed.set()
        if batch:
            try:
                await self.writer.run(self._commit, batch, self._spent_segments(batch))
            except apsw.Error as error:
                if isinstance(error, apsw.ConstraintError) and batch.updates:
                    # A status change the schema refuses is a bug; it must not hold every
                    # session's output hostage. Keep rows and positions, drop the updates.
                    log.error("batch_updates_refused", error=str(error), updates=repr(batch.updates)[:2000])
                    batch.updates.clear()
                    self._requeue(batch, pending_since)
                    return False
                log.error("batch_commit_failed", error=str(error), rows=len(batch.rows), retry_in=1.0)
                self._requeue(batch, pending_since)
                await trio.sleep(1.0)
                return False
            self.rows_committed += len(batch.rows)
            self.bytes_committed += batch.size
            self.last_commit_at = time.monotonic()
            self.live_feed.committed(batch.rows)
            for session_id in batch.updates:
                self._note_record_changed(session_id)
            self._wake_followers(batch.touched())
        self._committed_generation = generation
        event, self._committed = self._committed, trio.Event()
        event.set()
        return True

    def _commit(self, batch: Batch, spent: list[tuple[Path, int]]) -> None:
        """On the writer's thread: commit the batch, then delete the spool segments its
        positions leave behind. Unlinking a segment frees megabytes of page cache,
        milliseconds of work that the event loop must not do."""
        self.writer.store.commit_batch(batch)
        delete_spent_segments(spent)

    def _requeue(self, failed: Batch, pending_since: float | None) -> None:
        """Put a failed batch back in front of what arrived since: nothing is lost."""
        failed.extend(self._batch)
        self._batch = failed
        self.oldest_pending_since = pending_since
        self._has_work.set()

    def _spent_segments(self, batch: Batch) -> list[tuple[Path, int]]:
        """(spool directory, segment) for each session whose committed position is past a
        segment: every segment before that one is ingested."""
        spent = []
        for session_id, (segment, _offset) in batch.positions.items():
            spool_dir = self._spool_dirs.get(session_id)
            if spool_dir is not None and segment > 0:
                spent.append((spool_dir, segment))
        return spent


def delete_spent_segments(spent: list[tuple[Path, int]]) -> None:
    """Delete the spool segments wholly committed (see Ingestor._spent_segments)."""
    for spool_dir, segment in spent:
        spool.delete_segments_before(spool_dir, segment)
