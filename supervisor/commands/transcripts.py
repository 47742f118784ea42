"""Handlers that read transcripts: logs (a page at a time, a tail by lines) and follow."""

from __future__ import annotations

from typing import Any

from supervisor.commands.context import PAGE_BYTES, PAGE_ROWS, CommandContext, Emit, is_full
from supervisor.model import (
    iso_from_unix,
    session_view,
    unix_from_iso,
)
from supervisor.protocol import (
    ErrorCode,
    FollowRequest,
    LogsRequest,
    RequestError,
    ScreenRequest,
    encode_data,
)
from supervisor.replay import screen_replay
from supervisor.store import Reader, Row, Session


def read_page(
    reader: Reader, session_id: str, after: int, streams: list[str] | None, since_ts: float | None = None
) -> list[Row]:
    return reader.rows_after(session_id, after, PAGE_ROWS, streams, since_ts, max_bytes=PAGE_BYTES)


def row_message(row: Row) -> dict[str, Any]:
    return {"seq": row.seq, "ts": iso_from_unix(row.ts), "stream": row.stream, **encode_data(row.data)}


def plain_row(row: Row) -> dict[str, Any]:
    return {"row": row_message(row)}


def count_lines(data: bytes) -> int:
    return data.count(b"\n")


def tail_start(
    reader: Reader, session_id: str, lines: int, streams: list[str] | None, upto: int | None = None
) -> tuple[int, int, int]:
    """Where the last `lines` lines up to seq `upto` (if given) begin: (the first row's
    seq, how many newlines to cut from the front of that row, the last seq looked at).
    Read backwards a page at a time, keeping nothing but counts: a tail of many lines
    costs a page, not the lines.

    A final line without a newline (a prompt) counts as a line.
    """
    last_seq = reader.last_seq(session_id)
    if upto is not None:
        last_seq = min(last_seq, upto)
    first = last_seq + 1
    if lines == 0:
        return first, 0, last_seq
    newlines = 0
    needed: int | None = None
    before = first
    while True:
        page = reader.rows_before(session_id, before, PAGE_ROWS, streams, max_bytes=PAGE_BYTES)
        for row in page:
            if needed is None:
                # An unterminated last line counts: then one newline fewer is needed.
                needed = lines if not row.data.endswith(b"\n") else lines + 1
            first = row.seq
            newlines += count_lines(row.data)
            if newlines >= needed:
                # This row holds more newlines than needed: its text up to the newline
                # that ends the line before the ones asked for goes.
                return first, newlines - needed + 1, last_seq
        if not is_full(page):
            return first, 0, last_seq
        before = page[-1].seq


def cut_lines(data: bytes, newlines: int) -> bytes:
    """data without its first `newlines` lines."""
    cut = -1
    for _ in range(newlines):
        cut = data.index(b"\n", cut + 1)
    return data[cut + 1 :]


def time_argument(request: LogsRequest, name: str) -> float | None:
    """The request's time argument `name` in seconds since the epoch (None if absent)."""
    text = getattr(request, name)
    if text is None:
        return None
    try:
        return unix_from_iso(text)
    except ValueError:
        raise RequestError(ErrorCode.INVALID_ARGUMENT, f"logs: {name!r} is not an ISO 8601 time: {text!r}") from None


def last_seq_asked(reader: Reader, session_id: str, until_seq: int | None, until_ts: float | None) -> int | None:
    """The last seq a logs request with these bounds sends (None: no bound)."""
    bounds = [until_seq] if until_seq is not None else []
    if until_ts is not None:
        bounds.append(reader.seq_before_time(session_id, until_ts))
    return min(bounds, default=None)


def read_follow_page(
    reader: Reader, session_id: str, after: int, streams: list[str] | None
) -> tuple[Session | None, list[Row]]:
    """The session as it is, then its rows after `after`: in that order, so a session
    seen ended has all its rows in the page (its end is committed with them)."""
    session = reader.get_session(session_id)
    return session, read_page(reader, session_id, after, streams)


class TranscriptCommands(CommandContext):
    """Handlers that read transcripts: logs and follow."""

    async def cmd_logs(self, request: LogsRequest, emit: Emit) -> Any:
        if request.tail is not None and (request.since_seq is not None or request.since_time is not None):
            raise RequestError(
                ErrorCode.INVALID_ARGUMENT, "logs: 'tail' cannot be combined with 'since_seq' or 'since_time'"
            )
        since_ts = time_argument(request, "since_time")
        until_ts = time_argument(request, "until_time")
        session = await self._session(request.session)
        streams = [request.stream] if request.stream else None
        upto = await self.readers.run(last_seq_asked, session.id, request.until_seq, until_ts)
        sent = 0
        last_seq = 0
        if request.tail is not None:
            first, cut, last_seq = await self.readers.run(tail_start, session.id, request.tail, streams, upto)
            after = first - 1

            def tail_row(row: Row) -> dict[str, Any] | None:
                trimmed = row.seq == first and cut > 0
                if trimmed:
                    row = Row(row.session_id, row.seq, row.ts, row.stream, cut_lines(row.data, cut))
                    if not row.data:
                        return None
                return {"row": {**row_message(row), "trimmed": trimmed}}

            while after < last_seq:

                async def tail_page(after: int = after) -> list[Row]:
                    return [
                        row
                        for row in await self.readers.run(read_page, session.id, after, streams)
                        if row.seq <= last_seq
                    ]

                page = await self._send_page(emit, tail_page, tail_row)
                sent += page.rows
                if page.last_seq is None or not page.full:
                    break
                after = page.last_seq
        else:
            after = request.since_seq or 0
            if since_ts is not None:
                after = max(after, await self.readers.run(Reader.seq_before_time, session.id, since_ts))
            # A follow carries on from here: at least what existed when we looked.
            last_seq = await self.readers.run(Reader.last_seq, session.id)
            if upto is not None:
                last_seq = min(last_seq, upto)
            last_seq = max(after, last_seq)
            while True:

                async def next_page(after: int = after) -> list[Row]:
                    page = await self.readers.run(read_page, session.id, after, streams, since_ts)
                    return page if upto is None else [row for row in page if row.seq <= upto]

                page = await self._send_page(emit, next_page, plain_row)
                if page.last_seq is not None:
                    after = page.last_seq
                    last_seq = max(last_seq, after)
                sent += page.rows
                if not page.full:
                    break
        return {"rows": sent, "last_seq": last_seq, "status": session.status}

    async def cmd_screen(self, request: ScreenRequest, emit: Emit) -> Any:
        session = await self._session(request.session)
        if not session.tty:
            raise RequestError(
                ErrorCode.INVALID_STATE, f"session {session.id} has no terminal (started without tty): it has no screen"
            )
        replay = await self.readers.run(screen_replay, session.id)
        return {
            "through": replay.through,
            "tty_cols": session.tty_cols,
            "tty_rows": session.tty_rows,
            "status": session.status,
            **encode_data(replay.data),
        }

    async def cmd_follow(self, request: FollowRequest, emit: Emit) -> Any:
        session = await self._session(request.session)
        streams = [request.stream] if request.stream else None
        after = request.since_seq
        current: Session | None = None
        feed = self.ingestor.live_feed
        looked_at: int | None = None  # the session's record_changes when the database was last read
        while True:
            # Take the event before looking: a row read or committed after this point wakes us.
            changed = self.ingestor.session_event(session.id)
            # Rows read but not yet committed come from ingest, once every committed row
            # before them is sent: in order, and none twice, whichever holds it.
            ahead = feed.read_ahead(session.id, after, streams, PAGE_ROWS, PAGE_BYTES)
            if ahead is not None and ahead.through > after:
                if ahead.rows:

                    async def read_ahead(rows: list[Row] = ahead.rows) -> list[Row]:
                        return rows

                    await self._send_page(emit, read_ahead, plain_row)
                after = ahead.through
                continue
            committed_seq = feed.committed_seq(session.id)
            if ahead is not None and looked_at == self.ingestor.record_changes(session.id):
                # Every row up to committed_seq sent, and the session's record as it was
                # when the database was read: only a read or a commit brings more.
                await changed.wait()
                continue
            looked_at = self.ingestor.record_changes(session.id)

            async def follow_page(after: int = after) -> list[Row]:
                nonlocal current
                current, rows = await self.readers.run(read_follow_page, session.id, after, streams)
                if current is None:
                    raise RequestError(ErrorCode.NOT_FOUND, f"session {session.id} was deleted")
                return rows

            page = await self._send_page(emit, follow_page, plain_row)
            assert current is not None
            if page.last_seq is not None:
                after = page.last_seq
            if page.full:
                continue
            if committed_seq is not None:
                # Committed before the page was read, so the page had every row up to it
                # (retention may have dropped some): the rest come from ingest.
                after = max(after, committed_seq)
            if current.is_ended:
                # A session's end is committed with its last rows: nothing more will come.
                return {**session_view(current), "last_seq": after}
            await changed.wait()
