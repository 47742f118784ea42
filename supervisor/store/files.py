"""The database's files: whether there is a database at a path, whether the path still
names the file slotd opened, setting a lost database's WAL aside, and checkpoints.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import apsw

from supervisor.store.schema import connect

# How long a TRUNCATE checkpoint waits for the writer and the readers: it runs only when
# ingest is idle, and is simply tried again later.
TRUNCATE_BUSY_TIMEOUT_MS = 100


DATABASE_SUFFIXES = ("", "-wal", "-shm")


def database_is_empty(path: Path) -> bool:
    """True if there is no database at path to open: no file, or a 0-byte one without a
    WAL holding its content (a fresh database's first pages may still be in the WAL)."""
    try:
        if os.stat(path).st_size > 0:
            return False
    except FileNotFoundError:
        return True  # a WAL left without its database holds pages of nothing
    try:
        return os.stat(f"{path}-wal").st_size == 0
    except FileNotFoundError:
        return True


def _unused_name(name: str) -> Path:
    """name, or name.2, name.3, ...: the first that names no file, so an earlier
    incident's files set aside are never overwritten by a later one's."""
    candidate, number = Path(name), 1
    while os.path.lexists(candidate):
        number += 1
        candidate = Path(f"{name}.{number}")
    return candidate


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class DatabaseFile:
    """The files a connection opened, known by device and inode: SQLite writes on through
    its descriptors even after the path names another file, or none, so problem()
    compares the path with these."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._identities = {suffix: _file_identity(f"{path}{suffix}") for suffix in DATABASE_SUFFIXES}
        self._largest_size = os.stat(path).st_size

    def problem(self) -> str | None:
        """Why the path no longer names the database that was opened, or None."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return f"database {self.path} was deleted"
        if (now.st_dev, now.st_ino) != self._identities[""]:
            return f"database {self.path} was replaced by another file"
        if now.st_size < self._largest_size:
            # slotd never vacuums, and nothing else shrinks a database file: it was
            # truncated from outside (emptied, say), and a checkpoint now would write
            # pages into it at their offsets, leaving a malformed file.
            return f"database {self.path} was emptied" if now.st_size == 0 else f"database {self.path} was truncated"
        self._largest_size = max(self._largest_size, now.st_size)
        return None

    def set_aside_journal(self) -> list[Path]:
        """Once the database is lost and its connections closed: rename its WAL and shared
        memory, where they are still the files it opened, to *.lost-<UTC time>, so
        SQLite never applies them to whatever file the path names next (a restored
        copy). Returns the new names."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        moved = []
        for suffix in DATABASE_SUFFIXES[1:]:
            name = f"{self.path}{suffix}"
            identity = self._identities[suffix]
            if identity is not None and _file_identity(name) == identity:
                aside = _unused_name(f"{name}.lost-{stamp}")
                os.replace(name, aside)
                moved.append(aside)
        return moved


class Checkpointer:
    """A connection of its own for WAL checkpoints, so they run beside commits, not in them."""

    def __init__(self, path: Path) -> None:
        self.db = connect(path, writer=True)
        self.db.set_busy_timeout(TRUNCATE_BUSY_TIMEOUT_MS)

    def checkpoint(self) -> tuple[int, int]:
        """A passive checkpoint: never waits for readers or the writer; (log, checkpointed)."""
        return self.db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)

    def interrupt(self) -> None:
        """Stop a checkpoint running on another thread, or about to (it raises
        apsw.InterruptError there, keeping what it copied)."""
        self.db.interrupt()

    def forget_interrupt(self) -> None:
        """Let the next checkpoint run: an interrupt that came after the last one ended
        would stop it (a statement started while none runs clears it)."""
        self.db.execute("SELECT 1").fetchall()

    def truncate(self) -> bool:
        """Checkpoint everything and empty the WAL file, if the writer and every reader
        let it within TRUNCATE_BUSY_TIMEOUT_MS; True if it did."""
        try:
            log_frames, done = self.db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        except apsw.BusyError:
            return False
        return log_frames == done

    def close(self) -> None:
        self.db.close()


def leave_journal_on_close(*connections: apsw.Connection) -> None:
    """The last connection to close must neither checkpoint nor delete the WAL, as it
    would by default: once the database file is lost (emptied, replaced), that copies
    pages into a file that is not ours and throws away the only copy of the last
    commits. Store.set_aside_journal then keeps the WAL aside."""
    for connection in connections:
        connection.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
