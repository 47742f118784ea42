"""The SQLite store, through APSW: schema, migrations and every SQL statement.

One writer connection (``BEGIN IMMEDIATE``, WAL, no automatic checkpoints on the
capture path) and any number of reader connections. Nothing here is async: the daemon
calls these methods from worker threads so a commit never stalls the event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import apsw.bestpractice

from supervisor import jsonlimits
from supervisor.model import ENDED_STATUSES, LIVE_STATUSES, utc_now

BUSY_TIMEOUT_MS = 10_000
# What the WAL file is cut back to when it restarts after a burst (journal_size_limit).
WAL_SIZE_LIMIT = 16 * 1024 * 1024
# How long a TRUNCATE checkpoint waits for the writer and the readers: it runs only when
# ingest is idle, and is simply tried again later.
TRUNCATE_BUSY_TIMEOUT_MS = 100

_bestpractice_applied = False
_bestpractice_lock = threading.Lock()


def _apply_bestpractice() -> None:
    global _bestpractice_applied
    with _bestpractice_lock:
        if not _bestpractice_applied:
            apsw.bestpractice.apply(apsw.bestpractice.recommended)
            _bestpractice_applied = True


# Each step runs in its own transaction and moves PRAGMA user_version up by one.
MIGRATIONS: list[str] = [
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
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class Session:
    id: str
    arrival: int
    argv: list[str]
    cwd: str
    status: str
    queued_at: str
    priority: int = 0
    slot: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    pid_create_time: float | None = None
    shim_pid: int | None = None
    shim_create_time: float | None = None
    boot_id: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    stop_requested: bool = False
    started_at: str | None = None
    ended_at: str | None = None
    spool_dir: str | None = None
    spool_segment: int = 0
    spool_offset: int = 0
    transcript_bytes: int = 0
    truncation_seq: int | None = None
    truncated_bytes: int = 0
    pid_start_ticks: int | None = None
    shim_start_ticks: int | None = None

    @property
    def is_ended(self) -> bool:
        return self.status in ENDED_STATUSES


_SESSION_FIELDS = [f.name for f in dataclasses.fields(Session)]
_JSON_FIELDS = {"argv", "env", "labels"}
_SESSION_COLUMNS = ", ".join(_SESSION_FIELDS)
_TEXT_FIELDS = {"id", "status", "argv", "cwd", "env", "labels", "boot_id", "reason", "queued_at", "started_at", "ended_at", "spool_dir"}
# Text is read as bytes and decoded in _session_from_row: bytes that are not UTF-8 then
# damage their own row only, not every query that meets them (apsw would raise there).
_SELECT_COLUMNS = ", ".join(f"CAST({name} AS BLOB)" if name in _TEXT_FIELDS else name for name in _SESSION_FIELDS)


class DamagedRow(ValueError):
    """A session row slotd cannot use (edited behind its back, or written by a slotd
    that accepted more than this one does)."""

    def __init__(self, session_id: str, column: str, problem: str) -> None:
        super().__init__(f"session {session_id}: column {column} {problem}")
        self.session_id = session_id


def _session_from_row(row: Sequence[Any]) -> Session:
    values = dict(zip(_SESSION_FIELDS, row))
    raw_id = values["id"]
    session_id = raw_id.decode(errors="replace") if isinstance(raw_id, bytes) else str(raw_id)
    for name, value in values.items():
        if isinstance(value, bytes) and name in _TEXT_FIELDS:
            try:
                values[name] = value = value.decode()
            except UnicodeDecodeError as error:
                raise DamagedRow(session_id, name, f"is not UTF-8 text ({error})") from None
        if name in _JSON_FIELDS:
            try:
                # As strict as the wire: what is read here goes out in replies.
                values[name] = jsonlimits.loads(value)
            except (TypeError, ValueError) as error:
                raise DamagedRow(session_id, name, f"is not valid JSON ({error})") from None
        elif not (value is None or isinstance(value, (int, str)) or (isinstance(value, float) and math.isfinite(value))):
            raise DamagedRow(session_id, name, f"holds {type(value).__name__} {str(value)[:40]}, not text or a number")
    values["stop_requested"] = bool(values["stop_requested"])
    return Session(**values)


def _sessions_from_rows(rows: Iterable[Sequence[Any]]) -> list[Session]:
    """Sessions from rows, leaving out (and logging) damaged ones: one bad row must not
    hide every other session from `ps` or the queue."""
    sessions = []
    for row in rows:
        try:
            sessions.append(_session_from_row(row))
        except DamagedRow as error:
            logging.getLogger("slotd.store").error("damaged session row left out: %s", error)
    return sessions


def _to_column(name: str, value: Any) -> Any:
    if name in _JSON_FIELDS:
        return json.dumps(value)
    if name == "stop_requested":
        return int(bool(value))
    return value


@dataclass(frozen=True, slots=True)
class Row:
    """One transcript row."""

    session_id: str
    seq: int
    ts: float
    stream: str
    data: bytes


# What a row held in a batch costs in memory besides its data: the Row, its seq and ts
# objects, the bytes object's header and its slot in the list (~170 bytes measured on
# CPython 3.11). Batches are capped on data plus this, so tiny rows cannot make a batch
# of a few MiB of data take hundreds of MiB.
ROW_OVERHEAD = 170


def row_cost(data: bytes) -> int:
    """The memory a row holding data takes in a batch, as counted against its cap."""
    return len(data) + ROW_OVERHEAD


@dataclass
class Batch:
    """Everything one flush commits in one transaction."""

    rows: list[Row] = field(default_factory=list)
    # session id -> (segment, offset) reached in its spool
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)
    # session id -> columns to set, applied after the rows
    updates: dict[str, dict[str, Any]] = field(default_factory=dict)
    # bytes of transcript data in the rows
    size: int = 0
    # session id -> bytes of its rows' data in this batch
    session_bytes: dict[str, int] = field(default_factory=dict)
    # session id -> what its rows take in memory (row_cost)
    session_cost: dict[str, int] = field(default_factory=dict)

    @property
    def cost(self) -> int:
        """What all the rows take in memory (row_cost), as counted against the cap."""
        return self.size + ROW_OVERHEAD * len(self.rows)

    def add_row(self, row: Row) -> None:
        self.rows.append(row)
        self.size += len(row.data)
        self.session_bytes[row.session_id] = self.session_bytes.get(row.session_id, 0) + len(row.data)
        self.session_cost[row.session_id] = self.session_cost.get(row.session_id, 0) + row_cost(row.data)

    def touched(self) -> set[str]:
        """Every session this batch changes."""
        return {*self.session_bytes, *self.positions, *self.updates}

    def extend(self, newer: Batch) -> None:
        """Append a later batch to this one (keeping this one's changes first)."""
        for row in newer.rows:
            self.add_row(row)
        self.positions.update(newer.positions)
        for session_id, columns in newer.updates.items():
            self.update(session_id, **columns)

    def update(self, session_id: str, **columns: Any) -> None:
        self.updates.setdefault(session_id, {}).update(columns)

    def __bool__(self) -> bool:
        return bool(self.rows or self.positions or self.updates)


class AmbiguousPrefix(Exception):
    def __init__(self, prefix: str, matches: list[str]) -> None:
        more = "+" if len(matches) >= 10 else ""
        super().__init__(f"id prefix {prefix!r} matches {len(matches)}{more} sessions")
        self.matches = matches


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


class Checkpointer:
    """A connection of its own for WAL checkpoints, so they run beside commits, not in them."""

    def __init__(self, path: Path) -> None:
        self.db = connect(path, writer=True)
        self.db.set_busy_timeout(TRUNCATE_BUSY_TIMEOUT_MS)

    def checkpoint(self) -> tuple[int, int]:
        """A passive checkpoint: never waits for readers or the writer; (log, checkpointed)."""
        return self.db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)

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


class SchemaTooNew(Exception):
    """The database was written by a newer slotd: this one must not touch it."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"database schema version {found} is newer than this slotd knows ({known})")
        self.found = found
        self.known = known


def migrate(connection: apsw.Connection) -> int:
    """Apply the numbered migrations the database lacks; return the version reached."""
    version = connection.pragma("user_version")
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(version, SCHEMA_VERSION)
    for number in range(version, SCHEMA_VERSION):
        with connection:
            connection.execute(MIGRATIONS[number])
            connection.pragma("user_version", number + 1)
    return SCHEMA_VERSION


def _stream_filter(streams: Sequence[str] | None, args: list[Any]) -> str:
    """The WHERE terms that keep only these streams (appending their values to args).

    Without stdout, the term the partial index transcript_by_stream is declared with
    is spelled out too: SQLite uses a partial index only for a query whose WHERE
    clause contains its condition, and cannot see that in bound values.
    """
    if not streams:
        return ""
    args.extend(streams)
    terms = f" AND stream IN ({', '.join('?' for _ in streams)})"
    if "stdout" not in streams:
        terms += " AND stream <> 'stdout'"
    return terms


# The condition sessions_by_end is declared with, as SQL text: SQLite uses a partial
# index only for queries whose WHERE clause contains its condition (not bound values).
_ENDED_TERM = f"status IN ({', '.join(repr(status.value) for status in ENDED_STATUSES)})"


def _label_filter(labels: dict[str, Any] | None) -> tuple[list[str], list[Any]]:
    """WHERE terms (and their values) for sessions that have every one of these labels."""
    clauses: list[str] = []
    args: list[Any] = []
    for key, value in (labels or {}).items():
        # Same JSON type and value: true is not 1, and a null label matches null. A
        # row whose labels SQLite cannot parse matches nothing (rather than failing
        # the whole query for everyone); the rows it does return are checked again.
        path = "'$.' || json_quote(?)"
        clauses.append(
            f"CASE WHEN json_valid(labels) THEN json_type(labels, {path}) IS json_type(?, '$') "
            f"AND json_extract(labels, {path}) IS json_extract(?, '$') ELSE 0 END"
        )
        args.extend([key, json.dumps(value), key, json.dumps(value)])
    return clauses, args


class Reader:
    """A read-only connection: queries that never block the writer (WAL)."""

    def __init__(self, path: Path) -> None:
        self.db = connect(path, writer=False)

    def close(self) -> None:
        self.db.close()

    def get_session(self, session_id: str) -> Session | None:
        for row in self.db.execute(f"SELECT {_SELECT_COLUMNS} FROM sessions WHERE id = ?", (session_id,)):
            return _session_from_row(row)
        return None

    def find_session(self, prefix: str) -> Session | None:
        """The one session whose id starts with prefix; AmbiguousPrefix if several."""
        if not prefix:
            return None  # "" is a prefix of every id: it must never pick the only session
        exact = self.get_session(prefix)
        if exact is not None:
            return exact
        # Ids are lowercase hex with dashes: escape LIKE's wildcards all the same.
        pattern = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = list(
            self.db.execute(
                f"SELECT {_SELECT_COLUMNS} FROM sessions WHERE id LIKE ? ESCAPE '\\' LIMIT 10",
                (pattern,),
            )
        )
        if len(rows) > 1:
            raise AmbiguousPrefix(prefix, [row[0].decode(errors="replace") for row in rows])
        return _session_from_row(rows[0]) if rows else None

    def list_sessions(
        self,
        statuses: Sequence[str] | None = None,
        labels: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> list[Session]:
        """Sessions, the ones waiting for an operator first, then live, queued, ended."""
        query = f"SELECT {_SELECT_COLUMNS} FROM sessions"
        clauses, args = _label_filter(labels)
        if statuses:
            clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
            args.extend(statuses)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += """ ORDER BY CASE status
                WHEN 'waiting_checkpoint' THEN 0 WHEN 'running' THEN 1 WHEN 'paused' THEN 1
                WHEN 'queued' THEN 2 ELSE 3 END,
            CASE WHEN status = 'queued' THEN -priority ELSE 0 END,
            CASE WHEN status IN ('running', 'paused', 'waiting_checkpoint') THEN slot ELSE 0 END,
            CASE WHEN status = 'queued' THEN arrival ELSE 0 END,
            ended_at DESC, arrival DESC"""
        if limit is not None:
            query += " LIMIT ?"
            args.append(limit)
        return _sessions_from_rows(self.db.execute(query, args))

    def recent_sessions(
        self, labels: dict[str, Any] | None, recent_ended: int, limit: int | None = None
    ) -> tuple[list[Session], int]:
        """Every session not ended, then the recent_ended most recently ended ones (in
        list_sessions' order), and how many more ended sessions match: `ps` without
        -a. Two index walks and an index count, however many sessions have ended."""
        sessions = self.list_sessions(["queued", *LIVE_STATUSES], labels, limit)
        room = recent_ended if limit is None else min(recent_ended, limit - len(sessions))
        clauses, args = _label_filter(labels)
        where = " AND ".join([_ENDED_TERM, *clauses])
        sessions += _sessions_from_rows(
            self.db.execute(
                # Without statistics SQLite would pick sessions_by_status and sort them all.
                f"SELECT {_SELECT_COLUMNS} FROM sessions INDEXED BY sessions_by_end WHERE {where} "
                "ORDER BY ended_at DESC, arrival DESC LIMIT ?",
                [*args, room],
            )
        )
        ended = self.db.execute(f"SELECT count(*) FROM sessions WHERE {where}", args).get
        return sessions, max(ended - recent_ended, 0)

    def sessions_with_status(self, statuses: Sequence[str]) -> list[Session]:
        marks = ", ".join("?" for _ in statuses)
        query = f"SELECT {_SELECT_COLUMNS} FROM sessions WHERE status IN ({marks}) ORDER BY priority DESC, arrival"
        return _sessions_from_rows(self.db.execute(query, list(statuses)))

    def count_with_status(self, statuses: Sequence[str]) -> int:
        marks = ", ".join("?" for _ in statuses)
        return self.db.execute(f"SELECT count(*) FROM sessions WHERE status IN ({marks})", list(statuses)).get

    # -- transcript ----------------------------------------------------------------

    def last_seq(self, session_id: str) -> int:
        return self.db.execute(
            "SELECT coalesce(max(seq), 0) FROM transcript WHERE session_id = ?", (session_id,)
        ).get

    def transcript_stats(self, session_id: str) -> dict[str, int]:
        rows, size, last = self.db.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(max(seq), 0) "
            "FROM transcript WHERE session_id = ?",
            (session_id,),
        ).get
        return {"rows": rows, "bytes": size, "last_seq": last}

    def rows_after(
        self,
        session_id: str,
        after_seq: int,
        limit: int,
        streams: Sequence[str] | None = None,
        since_ts: float | None = None,
        max_bytes: int | None = None,
    ) -> list[Row]:
        """Up to limit rows with seq > after_seq, oldest first: one page of a transcript."""
        query = "SELECT seq, ts, stream, data FROM transcript WHERE session_id = ? AND seq > ?"
        args: list[Any] = [session_id, after_seq]
        query += _stream_filter(streams, args)
        if since_ts is not None:
            query += " AND ts >= ?"
            args.append(since_ts)
        query += " ORDER BY seq LIMIT ?"
        args.append(limit)
        return self._page(session_id, query, args, max_bytes)

    def seq_before_time(self, session_id: str, since_ts: float) -> int:
        """The seq after which the session's rows reach since_ts: where `logs --since
        TIME` starts. Found by bisection on the (session_id, seq) index, a few dozen
        lookups instead of a scan of every earlier row. Rows are stored in the order the
        shim read them and stamped with its clock, so ts rises with seq; only if the clock
        was set back while the session ran can a row before this point be newer than
        since_ts, and that row is not shown."""
        # Two queries: SQLite answers min() or max() alone from the index, both at once by a scan.
        low = self.db.execute("SELECT min(seq) FROM transcript WHERE session_id = ?", (session_id,)).get
        if low is None:
            return 0
        high = self.last_seq(session_id)
        # Invariant: the row with the smallest seq >= hi, if any, has ts >= since_ts;
        # every row with seq < lo has ts < since_ts. Seq may have a gap (retention).
        lo, hi = low, high + 1
        while lo < hi:
            mid = (lo + hi) // 2
            seq, ts = self.db.execute(
                "SELECT seq, ts FROM transcript WHERE session_id = ? AND seq >= ? ORDER BY seq LIMIT 1", (session_id, mid)
            ).get
            if ts >= since_ts:
                hi = mid
            else:
                lo = seq + 1
        return lo - 1

    def rows_before(
        self, session_id: str, before_seq: int, limit: int, streams: Sequence[str] | None = None, max_bytes: int | None = None
    ) -> list[Row]:
        """Up to limit rows with seq < before_seq, newest first: reading a transcript backwards."""
        query = "SELECT seq, ts, stream, data FROM transcript WHERE session_id = ? AND seq < ?"
        args: list[Any] = [session_id, before_seq]
        query += _stream_filter(streams, args)
        query += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return self._page(session_id, query, args, max_bytes)

    def _page(self, session_id: str, query: str, args: list[Any], max_bytes: int | None) -> list[Row]:
        """The rows of a transcript query, up to the one that reaches max_bytes of data:
        a page of big rows stays small, so a client holds little however it reads."""
        rows: list[Row] = []
        size = 0
        cursor = self.db.execute(query, args)
        for seq, ts, stream, data in cursor:
            rows.append(Row(session_id, seq, ts, stream, data))
            size += len(data)
            if max_bytes is not None and size >= max_bytes:
                break
        cursor.close()
        return rows

    def iter_transcript(
        self, session_id: str, after_seq: int = 0, page_size: int = 500, streams: Sequence[str] | None = None
    ) -> Iterator[Row]:
        """The whole transcript, page by page: never loaded whole into memory."""
        while True:
            page = self.rows_after(session_id, after_seq, page_size, streams)
            yield from page
            if len(page) < page_size:
                return
            after_seq = page[-1].seq

    def truncation_plan(self, session_id: str, cap: int, target: int) -> tuple[int, int] | None:
        """Which rows to drop so a transcript over cap comes down to about target bytes:
        (head_end, tail_start), to drop every row strictly between; None if none.

        The head is the first cap/2 bytes, fixed once truncated (it ends at the marker);
        the tail is the newest target - cap/2 bytes. Both are found by scanning from
        their end and stopping there, never by reading the whole transcript; and on a
        reader connection, so the scan never holds up a commit.
        """
        session = self.get_session(session_id)
        if session is None or session.transcript_bytes <= cap:
            return None
        half = cap // 2
        head_end = session.truncation_seq or self._scan_until(session_id, half, "ASC") or 0
        tail_start = self._scan_until(session_id, max(target - half, 0), "DESC") or self.last_seq(session_id)
        if tail_start <= head_end + 1:
            return None
        return head_end, tail_start

    def _scan_until(self, session_id: str, budget: int, order: str) -> int | None:
        """The last seq reached, scanning rows in `order`, before their bytes pass budget."""
        reached = None
        total = 0
        rows = self.db.execute(
            f"SELECT seq, length(data) FROM transcript WHERE session_id = ? ORDER BY seq {order}", (session_id,)
        )
        for seq, size in rows:
            total += size
            if total > budget:
                break
            reached = seq
        rows.close()
        return reached


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

        # The files opened: SQLite writes on through its descriptors even after the path
        # names another file, or none, so file_problem compares the path with these.
        self._identities = {suffix: _file_identity(f"{path}{suffix}") for suffix in DATABASE_SUFFIXES}
        self._largest_size = os.stat(path).st_size

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
        """Once the database is lost and this store closed: rename its WAL and shared
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

    def sessions_over_cap(self, cap: int) -> list[str]:
        return [sid for (sid,) in self.db.execute("SELECT id FROM sessions WHERE transcript_bytes > ?", (cap,))]

    def drop_middle_rows(self, session_id: str, head_end: int, tail_start: int, cap: int, max_rows: int = 256) -> int:
        """Drop up to max_rows of the oldest rows strictly between head_end and
        tail_start (a truncation_plan), keeping one marker row there; returns the bytes
        dropped, 0 once nothing is left to drop. Slices keep each call short, so the
        commits of live output get their turns between them.

        The marker is a system row that takes the first dropped row's sequence number,
        so sequence numbers stay strictly increasing and the gap is explained where it is.
        """
        with self.write():
            session = self.get_session(session_id)
            if session is None:
                return 0
            marker = session.truncation_seq
            lower = marker if marker is not None else head_end
            drop_end = self.db.execute(
                "SELECT coalesce(max(seq), 0) FROM (SELECT seq FROM transcript "
                "WHERE session_id = ? AND seq > ? AND seq < ? ORDER BY seq LIMIT ?)",
                (session_id, lower, tail_start, max_rows),
            ).get
            if drop_end == 0:
                return 0
            dropped = self.db.execute(
                "SELECT coalesce(sum(length(data)), 0) FROM transcript WHERE session_id = ? AND seq > ? AND seq <= ?",
                (session_id, lower, drop_end),
            ).get
            self.db.execute(
                "DELETE FROM transcript WHERE session_id = ? AND seq > ? AND seq <= ?",
                (session_id, lower, drop_end),
            )
            total_dropped = session.truncated_bytes + dropped
            text = (
                f"transcript truncated: {total_dropped} bytes dropped here to keep it under "
                f"{cap} bytes (retention.max_session_bytes)\n"
            ).encode()
            if marker is None:
                marker = lower + 1
                old_marker_bytes = 0
                self.db.execute(
                    "INSERT INTO transcript (session_id, seq, ts, stream, data) VALUES (?, ?, ?, 'system', ?)",
                    (session_id, marker, time.time(), text),
                )
            else:
                old_marker_bytes = self.db.execute(
                    "SELECT length(data) FROM transcript WHERE session_id = ? AND seq = ?", (session_id, marker)
                ).get
                self.db.execute(
                    "UPDATE transcript SET data = ? WHERE session_id = ? AND seq = ?", (text, session_id, marker)
                )
            self._update(
                session_id,
                {
                    "truncation_seq": marker,
                    "truncated_bytes": total_dropped,
                    "transcript_bytes": session.transcript_bytes - dropped - old_marker_bytes + len(text),
                },
            )
            return dropped

    def oldest_ended(self, limit: int) -> list[str]:
        return [
            sid
            for (sid,) in self.db.execute(
                f"SELECT id FROM sessions WHERE status IN ({', '.join('?' for _ in ENDED_STATUSES)}) "
                "ORDER BY ended_at LIMIT ?",
                (*ENDED_STATUSES, limit),
            )
        ]

    def used_bytes(self) -> int:
        """Bytes the database's live pages take (free pages excluded)."""
        pages = self.db.pragma("page_count") - self.db.pragma("freelist_count")
        return pages * self.db.pragma("page_size")


