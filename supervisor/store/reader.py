"""Reads: a read-only connection with every query the daemon and its clients need."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

from supervisor.errors import AmbiguousPrefix
from supervisor.model import ENDED_STATUSES
from supervisor.store.records import (
    _SELECT_COLUMNS,
    Row,
    Session,
    _session_from_row,
    _sessions_from_rows,
)
from supervisor.store.schema import connect


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

# Where a listing of ended sessions stands: the (ended_at, arrival) of the last one read.
EndedCursor = tuple[bytes | None, int]


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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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

    def ended_page(
        self,
        statuses: Sequence[str] | None,
        labels: dict[str, Any] | None,
        after: EndedCursor | None,
        limit: int,
    ) -> tuple[list[Session], EndedCursor | None]:
        """Up to limit ended sessions (of these statuses, with these labels) that ended
        before the cursor, the latest first (list_sessions' order), and the cursor to
        carry on from: None once none are left. One walk of sessions_by_end per page,
        so a listing of every ended session never sorts them all nor holds them all.

        The cursor is the (ended_at, arrival) of the last row read, damaged or not: a
        row left out must not stop the walk.
        """
        clauses, filter_args = _label_filter(labels)
        if statuses:
            clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
            filter_args.extend(statuses)
        rows: list[Sequence[Any]] = []
        select = (
            f"SELECT CAST(ended_at AS BLOB), arrival, {_SELECT_COLUMNS} FROM sessions INDEXED BY sessions_by_end WHERE "
        )
        if after is None or after[0] is not None:
            # Without statistics SQLite would pick sessions_by_status and sort them all.
            # ended_at comes back as bytes (it may not be UTF-8) and is compared as the
            # text it was stored as.
            where = [_ENDED_TERM, *clauses, "ended_at IS NOT NULL"]
            args = [*filter_args]
            if after is not None:
                where.append("(ended_at, arrival) < (CAST(? AS TEXT), ?)")
                args.extend(after)
            rows = list(
                self.db.execute(
                    select + " AND ".join(where) + " ORDER BY ended_at DESC, arrival DESC LIMIT ?", [*args, limit]
                )
            )
        if len(rows) < limit:
            # Rows without an end time (a hand-edited row) come last, as in list_sessions.
            where = [_ENDED_TERM, *clauses, "ended_at IS NULL"]
            args = [*filter_args]
            if after is not None and after[0] is None:
                where.append("arrival < ?")
                args.append(after[1])
            rows += self.db.execute(
                select + " AND ".join(where) + " ORDER BY arrival DESC LIMIT ?", [*args, limit - len(rows)]
            )
        cursor = (rows[-1][0], rows[-1][1]) if len(rows) == limit else None
        return _sessions_from_rows(row[2:] for row in rows), cursor

    def count_ended(self, labels: dict[str, Any] | None) -> int:
        """How many ended sessions have these labels (an index count without labels)."""
        clauses, args = _label_filter(labels)
        return self.db.execute(f"SELECT count(*) FROM sessions WHERE {' AND '.join([_ENDED_TERM, *clauses])}", args).get

    def sessions_with_status(self, statuses: Sequence[str]) -> list[Session]:
        marks = ", ".join("?" for _ in statuses)
        query = f"SELECT {_SELECT_COLUMNS} FROM sessions WHERE status IN ({marks}) ORDER BY priority DESC, arrival"
        return _sessions_from_rows(self.db.execute(query, list(statuses)))

    def count_with_status(self, statuses: Sequence[str]) -> int:
        marks = ", ".join("?" for _ in statuses)
        return self.db.execute(f"SELECT count(*) FROM sessions WHERE status IN ({marks})", list(statuses)).get

    # -- transcript ----------------------------------------------------------------

    def last_seq(self, session_id: str) -> int:
        return self.db.execute("SELECT coalesce(max(seq), 0) FROM transcript WHERE session_id = ?", (session_id,)).get

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
                "SELECT seq, ts FROM transcript WHERE session_id = ? AND seq >= ? ORDER BY seq LIMIT 1",
                (session_id, mid),
            ).get
            if ts >= since_ts:
                hi = mid
            else:
                lo = seq + 1
        return lo - 1

    def rows_before(
        self,
        session_id: str,
        before_seq: int,
        limit: int,
        streams: Sequence[str] | None = None,
        max_bytes: int | None = None,
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
