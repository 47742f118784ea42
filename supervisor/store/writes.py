"""Writes: the one writer connection, its transactions, and every change the daemon makes."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw

from supervisor.errors import DamagedRow
from supervisor.model import ENDED_STATUSES, utc_now
from supervisor.store.files import DatabaseFile
from supervisor.store.reader import Reader
from supervisor.store.records import (
    _SELECT_COLUMNS,
    _SESSION_COLUMNS,
    _SESSION_FIELDS,
    Batch,
    Session,
    _session_from_row,
    _to_column,
)
from supervisor.store.schema import BUSY_TIMEOUT_MS, connect, migrate


class Store(Reader):
    """The writer connection: every write the daemon makes, and the reads it needs too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = connect(path, writer=True)
        try:
            migrate(self.db)
        except BaseException:
            self.db.close()
            raise
        self.page_size: int = self.db.pragma("page_size")
        # Frames in the WAL after the latest commit, as SQLite reports them: read by the
        # checkpoint loop (another thread; an int is read whole) to act on the WAL's size.
        self.wal_frames = 0
        self.db.set_wal_hook(self._note_wal_frames)
        self.file = DatabaseFile(path)

    def _note_wal_frames(self, _connection: apsw.Connection, _name: str, frames: int) -> int:
        self.wal_frames = frames
        return apsw.SQLITE_OK

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """One write transaction: BEGIN IMMEDIATE, then COMMIT (ROLLBACK on an error).

        Not `with self.db:`: APSW (3.51 and later) runs that BEGIN and COMMIT through
        sqlite3_exec while holding the GIL, so SQLite's busy wait for a lock another
        process holds stopped every Python thread for up to the whole busy timeout
        (the event loop and the readers included). Statements run through execute()
        release the GIL while SQLite works and waits. Nested calls join the open
        transaction as a savepoint, which takes no lock and does no I/O.
        docs/notes/apsw-with-holds-gil.md has a reproduction for upstream.
        """
        if self.db.in_transaction:
            with self.db:
                yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.db.in_transaction:  # some errors (a full disk) roll back by themselves
                self.db.execute("ROLLBACK")
            raise
        try:
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def file_problem(self) -> str | None:
        """Why the path no longer names the database this store writes to, or None."""
        return self.file.problem()

    def set_aside_journal(self) -> list[Path]:
        """Once the database is lost and this store closed: its WAL and shared memory,
        renamed so SQLite never applies them to another file (DatabaseFile)."""
        return self.file.set_aside_journal()

    # -- sessions ------------------------------------------------------------------

    def next_arrival(self) -> int:
        """The arrival after every one handed out, deleted sessions' included.

        The last one is kept in settings, so a prune that empties the table does not
        start the count again; the largest stored arrival covers a database from
        before the counter (no migration needed).
        """
        return self.db.execute(
            "SELECT max(coalesce((SELECT CAST(value AS INTEGER) FROM settings WHERE key = 'last_arrival'), 0),"
            " coalesce((SELECT max(arrival) FROM sessions), 0)) + 1"
        ).get

    def create_session(self, session: Session) -> Session:
        """Insert a session; it arrives after every session ever stored."""
        with self.write():
            session = dataclasses.replace(session, arrival=self.next_arrival())
            self.set_setting("last_arrival", str(session.arrival))
            placeholders = ", ".join("?" for _ in _SESSION_FIELDS)
            values = [_to_column(name, getattr(session, name)) for name in _SESSION_FIELDS]
            self.db.execute(f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES ({placeholders})", values)
        return session

    def next_queued(self) -> Session | None:
        """The session to start next: highest priority, then first in. A damaged row
        is failed on the spot, so it can neither start nor block the queue."""
        while True:
            rows = list(
                self.db.execute(
                    f"SELECT {_SELECT_COLUMNS} FROM sessions WHERE status = 'queued' "
                    "ORDER BY priority DESC, arrival LIMIT 1"
                )
            )
            if not rows:
                return None
            try:
                return _session_from_row(rows[0])
            except DamagedRow as error:
                with self.write():
                    self.db.execute(
                        "UPDATE sessions SET status = 'failed', reason = ?, ended_at = ? WHERE id = ?",
                        (f"its record is damaged: {error}", utc_now(), error.session_id),
                    )

    def transition(self, session_id: str, from_statuses: Sequence[str], **columns: Any) -> Session | None:
        """Change a session only if it is still in one of from_statuses; return it after."""
        with self.write():
            current = self.get_session(session_id)
            if current is None or current.status not in from_statuses:
                return None
            self._update(session_id, columns)
            return self.get_session(session_id)

    def change_labels(self, session_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Session | None:
        """Replace a session's labels with change(its labels), read and written in one
        transaction (an exception from change leaves them as they were); None if there
        is no such session."""
        with self.write():
            current = self.get_session(session_id)
            if current is None:
                return None
            self._update(session_id, {"labels": change(current.labels)})
            return self.get_session(session_id)

    def update_session(self, session_id: str, **columns: Any) -> None:
        with self.write():
            self._update(session_id, columns)

    def _update(self, session_id: str, columns: dict[str, Any]) -> None:
        for name in columns:
            if name not in _SESSION_FIELDS or name == "id":
                raise ValueError(f"not a session column: {name}")
        assignments = ", ".join(f"{name} = ?" for name in columns)
        values = [_to_column(name, value) for name, value in columns.items()]
        self.db.execute(f"UPDATE sessions SET {assignments} WHERE id = ?", [*values, session_id])

    def delete_session(self, session_id: str) -> bool:
        with self.write():
            self.db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            return self.db.changes() > 0

    def commit_batch(self, batch: Batch) -> None:
        """Rows, spool positions and status changes, in one transaction."""
        with self.write():
            self.db.executemany(
                "INSERT INTO transcript (session_id, seq, ts, stream, data) VALUES (?, ?, ?, ?, ?)",
                ((r.session_id, r.seq, r.ts, r.stream, r.data) for r in batch.rows),
            )
            self.db.executemany(
                "UPDATE sessions SET transcript_bytes = transcript_bytes + ? WHERE id = ?",
                ((size, session_id) for session_id, size in batch.session_bytes.items()),
            )
            self.db.executemany(
                "UPDATE sessions SET spool_segment = ?, spool_offset = ? WHERE id = ?",
                ((segment, offset, session_id) for session_id, (segment, offset) in batch.positions.items()),
            )
            for session_id, columns in batch.updates.items():
                self._update(session_id, columns)

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        for (value,) in self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)):
            return value
        return default

    def set_setting(self, key: str, value: str) -> None:
        with self.write():
            self.db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def prune(self, ended_before: str | None, statuses: Iterable[str]) -> list[str]:
        """Delete ended sessions (and, by cascade, their rows); return their ids."""
        statuses = [s for s in statuses if s in ENDED_STATUSES]
        marks = ", ".join("?" for _ in statuses)
        query = f"SELECT id FROM sessions WHERE status IN ({marks})"
        args: list[Any] = list(statuses)
        if ended_before is not None:
            query += " AND ended_at < ?"
            args.append(ended_before)
        with self.write():
            ids = [session_id for (session_id,) in self.db.execute(query, args)]
            self.db.executemany("DELETE FROM sessions WHERE id = ?", ((i,) for i in ids))
        return ids

    def restart_wal(self, wait_ms: int) -> bool:
        """Between two commits: checkpoint every frame and start the WAL over, waiting up
        to wait_ms for readers of older snapshots to finish; True if it did.

        On the writer connection, so it competes with no commit for the write lock; and
        RESTART, not PASSIVE, because under steady reads some reader always holds a
        snapshot when a passive checkpoint completes, and the WAL then never restarts.
        """
        self.db.set_busy_timeout(wait_ms)
        try:
            log_frames, done = self.db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_RESTART)
        except apsw.BusyError:
            return False
        finally:
            self.db.set_busy_timeout(BUSY_TIMEOUT_MS)
        return log_frames == done
