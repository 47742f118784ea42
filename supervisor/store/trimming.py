"""Retention's SQL: which transcripts are over their cap, dropping the middle of one in
slices behind a marker row, and what may be pruned while the database is over budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from supervisor.model import ENDED_STATUSES
from supervisor.store.reader import Reader
from supervisor.store.writes import Store


def truncation_plan(reader: Reader, session_id: str, cap: int, target: int) -> tuple[int, int] | None:
    """Which rows to drop so a transcript over cap comes down to about target bytes:
    (head_end, tail_start), to drop every row strictly between; None if none.

    The head is the first cap/2 bytes, fixed once truncated (it ends at the marker);
    the tail is the newest target - cap/2 bytes. Both are found by scanning from
    their end and stopping there, never by reading the whole transcript; and on a
    reader connection, so the scan never holds up a commit.
    """
    session = reader.get_session(session_id)
    if session is None or session.transcript_bytes <= cap:
        return None
    half = cap // 2
    head_end = session.truncation_seq or _scan_until(reader, session_id, half, "ASC") or 0
    tail_start = _scan_until(reader, session_id, max(target - half, 0), "DESC") or reader.last_seq(session_id)
    if tail_start <= head_end + 1:
        return None
    return head_end, tail_start


def _scan_until(reader: Reader, session_id: str, budget: int, order: str) -> int | None:
    """The last seq reached, scanning rows in `order`, before their bytes pass budget."""
    reached = None
    total = 0
    rows = reader.db.execute(
        f"SELECT seq, length(data) FROM transcript WHERE session_id = ? ORDER BY seq {order}", (session_id,)
    )
    for seq, size in rows:
        total += size
        if total > budget:
            break
        reached = seq
    rows.close()
    return reached


def sessions_over_cap(store: Store, cap: int) -> list[str]:
    """Sessions whose transcript is over cap bytes."""
    return [sid for (sid,) in store.db.execute("SELECT id FROM sessions WHERE transcript_bytes > ?", (cap,))]


def drop_middle_rows(
    store: Store,
    session_id: str,
    head_end: int,
    tail_start: int,
    marker_text: Callable[[int], bytes],
    max_rows: int = 256,
) -> int:
    """Drop up to max_rows of the oldest rows strictly between head_end and
    tail_start (a truncation_plan), keeping one marker row there, whose text is
    marker_text(bytes dropped so far); returns the bytes dropped now, 0 once nothing
    is left to drop. Slices keep each call short, so the
    commits of live output get their turns between them.

    The marker is a system row that takes the first dropped row's sequence number,
    so sequence numbers stay strictly increasing and the gap is explained where it is.
    """
    with store.write():
        session = store.get_session(session_id)
        if session is None:
            return 0
        marker = session.truncation_seq
        lower = marker if marker is not None else head_end
        drop_end = store.db.execute(
            "SELECT coalesce(max(seq), 0) FROM (SELECT seq FROM transcript "
            "WHERE session_id = ? AND seq > ? AND seq < ? ORDER BY seq LIMIT ?)",
            (session_id, lower, tail_start, max_rows),
        ).get
        if drop_end == 0:
            return 0
        dropped = store.db.execute(
            "SELECT coalesce(sum(length(data)), 0) FROM transcript WHERE session_id = ? AND seq > ? AND seq <= ?",
            (session_id, lower, drop_end),
        ).get
        store.db.execute(
            "DELETE FROM transcript WHERE session_id = ? AND seq > ? AND seq <= ?",
            (session_id, lower, drop_end),
        )
        total_dropped = session.truncated_bytes + dropped
        text = marker_text(total_dropped)
        if marker is None:
            marker = lower + 1
            old_marker_bytes = 0
            store.db.execute(
                "INSERT INTO transcript (session_id, seq, ts, stream, data) VALUES (?, ?, ?, 'system', ?)",
                (session_id, marker, time.time(), text),
            )
        else:
            old_marker_bytes = store.db.execute(
                "SELECT length(data) FROM transcript WHERE session_id = ? AND seq = ?", (session_id, marker)
            ).get
            store.db.execute(
                "UPDATE transcript SET data = ? WHERE session_id = ? AND seq = ?", (text, session_id, marker)
            )
        store.update_session(
            session_id,
            truncation_seq=marker,
            truncated_bytes=total_dropped,
            transcript_bytes=session.transcript_bytes - dropped - old_marker_bytes + len(text),
        )
        return dropped


def oldest_ended(store: Store, limit: int) -> list[str]:
    return [
        sid
        for (sid,) in store.db.execute(
            f"SELECT id FROM sessions WHERE status IN ({', '.join('?' for _ in ENDED_STATUSES)}) "
            "ORDER BY ended_at LIMIT ?",
            (*ENDED_STATUSES, limit),
        )
    ]


def used_bytes(store: Store) -> int:
    """Bytes the database's live pages take (free pages excluded)."""
    pages = store.db.pragma("page_count") - store.db.pragma("freelist_count")
    return pages * store.db.pragma("page_size")
