"""Opening slotd's database: the connection settings and the schema, brought to the
current version by numbered migrations.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import apsw
import apsw.bestpractice

from supervisor.errors import SchemaTooNew

BUSY_TIMEOUT_MS = 10_000
# What the WAL file is cut back to when it restarts after a burst (journal_size_limit).
WAL_SIZE_LIMIT = 16 * 1024 * 1024

_bestpractice_applied = False
_bestpractice_lock = threading.Lock()


def _apply_bestpractice() -> None:
    global _bestpractice_applied
    with _bestpractice_lock:
        if not _bestpractice_applied:
            apsw.bestpractice.apply(apsw.bestpractice.recommended)
            _bestpractice_applied = True


_STREAMS_CHECK = "CHECK (stream IN ('stdout', 'stderr', 'stdin', 'system'))"
_STREAMS_CHECK_WITH_TTY = "CHECK (stream IN ('stdout', 'stderr', 'stdin', 'system', 'tty'))"


def admit_the_tty_stream(connection: apsw.Connection) -> None:
    """Migration 7: the transcript's CHECK admits the `tty` stream too.

    SQLite cannot ALTER a CHECK, and rebuilding the table copies every row: minutes, and
    gigabytes of WAL, on a big database, at the first start of the new slotd. A CHECK
    that only admits one more value is edited in the schema in place instead, as SQLite
    documents for loosening a constraint ("Making Other Kinds Of Table Schema Changes",
    sqlite.org/lang_altertable.html): every stored row satisfies the new one. Runs inside
    migrate's transaction; schema_version goes up so every connection reloads the schema.
    """
    sql = connection.execute("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'transcript'").get
    if not isinstance(sql, str) or sql.count(_STREAMS_CHECK) != 1:
        raise apsw.CorruptError(f"the transcript table is not as slotd made it (its streams CHECK): {sql!r}")
    version = connection.pragma("schema_version")
    connection.pragma("writable_schema", True)
    try:
        connection.execute(
            "UPDATE sqlite_schema SET sql = ? WHERE type = 'table' AND name = 'transcript'",
            (sql.replace(_STREAMS_CHECK, _STREAMS_CHECK_WITH_TTY),),
        )
        connection.pragma("schema_version", version + 1)
    finally:
        connection.pragma("writable_schema", False)


# Each step runs in its own transaction and moves PRAGMA user_version up by one.
MIGRATIONS: list[str | Callable[[apsw.Connection], None]] = [
    # 1: sessions, their transcripts, daemon-wide settings
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        arrival INTEGER NOT NULL UNIQUE,
        priority INTEGER NOT NULL DEFAULT 0,
        slot INTEGER,
        status TEXT NOT NULL CHECK (status IN
            ('queued', 'running', 'paused', 'waiting_checkpoint',
             'completed', 'failed', 'killed', 'lost', 'cancelled')),
        argv TEXT NOT NULL,
        cwd TEXT NOT NULL,
        env TEXT NOT NULL DEFAULT '{}',
        labels TEXT NOT NULL DEFAULT '{}',
        pid INTEGER,
        pid_create_time REAL,
        shim_pid INTEGER,
        shim_create_time REAL,
        boot_id TEXT,
        exit_code INTEGER,
        signal INTEGER,
        reason TEXT,
        stop_requested INTEGER NOT NULL DEFAULT 0,
        queued_at TEXT NOT NULL,
        started_at TEXT,
        ended_at TEXT,
        spool_dir TEXT,
        spool_segment INTEGER NOT NULL DEFAULT 0,
        spool_offset INTEGER NOT NULL DEFAULT 0,
        transcript_bytes INTEGER NOT NULL DEFAULT 0,
        CHECK ((slot IS NOT NULL) = (status IN ('running', 'paused', 'waiting_checkpoint')))
    );
    -- Two live sessions in one slot are impossible, whatever the code does.
    CREATE UNIQUE INDEX sessions_one_live_per_slot ON sessions(slot)
        WHERE status IN ('running', 'paused', 'waiting_checkpoint');
    CREATE INDEX sessions_by_status ON sessions(status, priority DESC, arrival);

    CREATE TABLE transcript (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        ts REAL NOT NULL,
        stream TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr', 'stdin', 'system')),
        data BLOB NOT NULL
    );
    CREATE UNIQUE INDEX transcript_by_session ON transcript(session_id, seq);

    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: retention's per-session cap: where the truncation marker stands, what it dropped
    """
    ALTER TABLE sessions ADD COLUMN truncation_seq INTEGER;
    ALTER TABLE sessions ADD COLUMN truncated_bytes INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: process identity by start time in clock ticks since boot, which a clock step
    # cannot move (the create times stay, for people)
    """
    ALTER TABLE sessions ADD COLUMN pid_start_ticks INTEGER;
    ALTER TABLE sessions ADD COLUMN shim_start_ticks INTEGER;
    """,
    # 4: a stream filter (`logs --stream stderr`) finds its rows without walking the whole
    # session. stdout rows, the bulk of most transcripts, stay out of the index, so
    # capture pays for it only on the other streams; the stdout filter walks by seq.
    """
    CREATE INDEX transcript_by_stream ON transcript(session_id, stream, seq) WHERE stream <> 'stdout';
    """,
    # 5: `ps` shows the most recently ended sessions without sorting all of them
    """
    CREATE INDEX sessions_by_end ON sessions(ended_at, arrival)
        WHERE status IN ('completed', 'failed', 'killed', 'lost', 'cancelled');
    """,
    # 6: terminal sessions: whether a session runs on a pseudo-terminal, and its window size
    """
    ALTER TABLE sessions ADD COLUMN tty INTEGER NOT NULL DEFAULT 0 CHECK (tty IN (0, 1));
    ALTER TABLE sessions ADD COLUMN tty_cols INTEGER;
    ALTER TABLE sessions ADD COLUMN tty_rows INTEGER;
    """,
    # 7: the `tty` stream, a terminal's output (a step in code: see admit_the_tty_stream)
    admit_the_tty_stream,
    # 8: the nice value a session's command runs at (sessions from before have none)
    """
    ALTER TABLE sessions ADD COLUMN nice INTEGER;
    """,
    # 9: limits: run time (seconds) and memory (bytes), and why a stop was asked for;
    # whether the command's environment starts from the daemon's (sessions from before
    # did) or is the session's env alone (what slotctl sends: its own environment)
    """
    ALTER TABLE sessions ADD COLUMN timeout REAL;
    ALTER TABLE sessions ADD COLUMN memory_limit INTEGER;
    ALTER TABLE sessions ADD COLUMN stop_reason TEXT;
    ALTER TABLE sessions ADD COLUMN inherit_env INTEGER NOT NULL DEFAULT 1 CHECK (inherit_env IN (0, 1));
    """,
    # 10: views for people with a sqlite3 shell (docs/schema.md): the transcript as text
    # with local times, sessions with their times local and their durations
    """
    CREATE VIEW transcript_text AS
        SELECT session_id, seq, strftime('%Y-%m-%d %H:%M:%f', ts, 'unixepoch', 'localtime') AS local_time,
               stream, CAST(data AS TEXT) AS text
        FROM transcript;
    CREATE VIEW session_times AS
        SELECT id, status, slot, argv, labels, exit_code, signal, reason,
               datetime(queued_at, 'localtime') AS queued_local,
               datetime(started_at, 'localtime') AS started_local,
               datetime(ended_at, 'localtime') AS ended_local,
               round((julianday(coalesce(started_at, ended_at, 'now')) - julianday(queued_at)) * 86400, 3)
                   AS waited_seconds,
               round((julianday(coalesce(ended_at, 'now')) - julianday(started_at)) * 86400, 3) AS ran_seconds,
               transcript_bytes
        FROM sessions;
    """,
    # 11: which session a session repeats (`restart`); none for the others
    """
    ALTER TABLE sessions ADD COLUMN restart_of TEXT;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path, *, writer: bool) -> apsw.Connection:
    """Open a connection with the daemon's settings applied."""
    _apply_bestpractice()
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE if writer else apsw.SQLITE_OPEN_READONLY
    connection = apsw.Connection(str(path), flags=flags)
    # bestpractice sets 100 ms; a daemon with outside readers needs more patience.
    connection.set_busy_timeout(BUSY_TIMEOUT_MS)
    connection.pragma("foreign_keys", True)
    if writer:
        connection.pragma("journal_mode", "wal")
        connection.pragma("synchronous", "NORMAL")
        # Checkpoints cost ~30 % on the capture path: a background task runs them.
        connection.pragma("wal_autocheckpoint", 0)
        # Applied by the connection that restarts the WAL (the writer, at its first commit
        # after a complete checkpoint): the file shrinks back after a burst.
        connection.pragma("journal_size_limit", WAL_SIZE_LIMIT)
        connection.transaction_mode = "IMMEDIATE"
    return connection


def migrate(connection: apsw.Connection, *, to: int = SCHEMA_VERSION) -> int:
    """Apply the numbered migrations the database lacks, up to version `to` (tests build
    older databases with it); return the version reached."""
    version = connection.pragma("user_version")
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(version, SCHEMA_VERSION)
    for number in range(version, to):
        step = MIGRATIONS[number]
        with connection:
            if callable(step):
                step(connection)
            else:
                connection.execute(step)
            connection.pragma("user_version", number + 1)
    return max(version, to)
