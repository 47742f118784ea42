"""Rows read from the spools but not yet committed, so that followers get them at once.

A row read from a session's spool has its sequence number and its bytes from the moment
ingest reads it: the shim only ever appends whole records, and after a daemon crash
ingest reads the same records again from the spool position committed with the last
batch and numbers them the same way (no row the daemon writes itself is numbered among
them meanwhile: see Ingestor.replay). So a follower may be sent such a row before it is
committed, and the transcript will never hold that sequence number with other bytes.

Rows the daemon writes itself (system rows: "started in slot 1", a stop's note, how the
session ended) have no record in the spool: after a crash they may never be written, or
be written later with another text or time, and every row numbered after one of them
would then take another number. So a session's uncommitted rows are shown up to its
first uncommitted row the daemon wrote itself; the rest once they are committed.

What it holds are the rows of the batches being built and committed, which ingest
holds anyway: references to them, nothing copied. That is what ingest's back-pressure
bounds: a session reads its spool only while its share of batch_max_bytes has room,
then up to one read (1 MiB) more, and during a commit the batch in flight is held
beside the next one.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from supervisor.store import Row


def _seq_of(row: Row) -> int:
    return row.seq


@dataclass
class _Uncommitted:
    """One session's rows numbered but not yet committed."""

    committed_seq: int  # the highest seq known committed
    rows: list[Row] = field(default_factory=list)  # every row after it, in order
    held: deque[int] = field(default_factory=deque)  # the seqs among them the daemon wrote


class ReadAhead(NamedTuple):
    """Uncommitted rows a follower may be sent now."""

    rows: list[Row]
    through: int  # the seq of the last row looked at (sent, or left out by the stream filter)


class LiveFeed:
    """Per session, the rows ingest has numbered and not yet committed."""

    def __init__(self) -> None:
        self._sessions: dict[str, _Uncommitted] = {}

    def register(self, session_id: str, last_seq: int) -> None:
        """Rows after last_seq (the session's highest committed) will be added."""
        self._sessions.setdefault(session_id, _Uncommitted(last_seq))

    def forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def add(self, row: Row, from_spool: bool) -> bool:
        """Hold a row just numbered; True if followers may be sent it now."""
        pending = self._sessions[row.session_id]
        pending.rows.append(row)
        if not from_spool:
            pending.held.append(row.seq)
        return not pending.held

    def committed(self, rows: Iterable[Row]) -> None:
        """These rows are committed: the database has them from now on."""
        last: dict[str, int] = {}
        for row in rows:
            last[row.session_id] = max(row.seq, last.get(row.session_id, 0))
        for session_id, seq in last.items():
            pending = self._sessions.get(session_id)
            if pending is None:
                continue
            pending.committed_seq = max(pending.committed_seq, seq)
            del pending.rows[: bisect.bisect_right(pending.rows, seq, key=_seq_of)]
            while pending.held and pending.held[0] <= seq:
                pending.held.popleft()

    def committed_seq(self, session_id: str) -> int | None:
        """The highest seq of the session known committed (None if not followed here):
        every row up to it is in the database."""
        pending = self._sessions.get(session_id)
        return None if pending is None else pending.committed_seq

    def read_ahead(
        self, session_id: str, after: int, streams: Sequence[str] | None, max_rows: int, max_bytes: int
    ) -> ReadAhead | None:
        """The uncommitted rows after `after` that may be shown (of `streams`, up to
        max_rows or the one that reaches max_bytes), or None if rows up to `after` may be
        missing: those are committed, and the database has them."""
        pending = self._sessions.get(session_id)
        if pending is None or after < pending.committed_seq:
            return None
        shown_below = pending.held[0] if pending.held else None
        page: list[Row] = []
        size = 0
        through = after
        for index in range(bisect.bisect_right(pending.rows, after, key=_seq_of), len(pending.rows)):
            row = pending.rows[index]
            if shown_below is not None and row.seq >= shown_below:
                break
            through = row.seq
            if streams is None or row.stream in streams:
                page.append(row)
                size += len(row.data)
                if len(page) >= max_rows or size >= max_bytes:
                    break
        return ReadAhead(page, through)
