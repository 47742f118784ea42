"""One handler per protocol command: check the arguments' meaning, act, shape the reply.

Handlers know neither sockets (control.py) nor SQL (store.py): they call the slot
manager for anything that touches a session's processes and the reader pool for queries.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

import trio

from supervisor import __version__
from supervisor.config import Config
from supervisor.database import DatabaseWriter, ReaderPool
from supervisor.diskspace import free_bytes
from supervisor.errors import InvalidArgument, InvalidState, SlotdError, SlotsFull, StorageFull
from supervisor.ingest import Ingestor
from supervisor.model import (
    ALL_STATUSES,
    ENDED_STATUSES,
    LiveState,
    Status,
    iso_from_unix,
    session_view,
    unix_from_iso,
    utc_now,
)
from supervisor.protocol import (
    PS_RECENT_ENDED,
    PS_REPLY_MAX,
    CancelRequest,
    ClientStalled,
    DeleteRequest,
    DrainRequest,
    ErrorCode,
    FollowRequest,
    InfoRequest,
    KillRequest,
    LogsRequest,
    PauseRequest,
    PruneRequest,
    PsRequest,
    Request,
    RequestError,
    ResumeRequest,
    SendRequest,
    ShowRequest,
    ShutdownRequest,
    StartRequest,
    StopRequest,
    UndrainRequest,
    encode_data,
    signal_number,
)
from supervisor.slots import SlotManager
from supervisor.store import AmbiguousPrefix, DamagedRow, EndedCursor, Reader, Row, Session


class Emit(Protocol):
    """Sends messages of the request being answered (before its final reply), in order."""

    async def __call__(self, *messages: dict[str, Any]) -> None: ...


# A page of transcript: what one client's request holds in memory at a time.
PAGE_ROWS = 500
PAGE_BYTES = 1 << 20
# Pages all clients together may hold at once (so about 64 MiB of transcript): a client
# that stops reading keeps its page until the stall timeout lets it go, and past this
# many the others wait for a page instead of growing the daemon.
PAGES_IN_FLIGHT = 64
# How long a client may take over one page before it is let go (as control.py lets go
# of one that takes nothing for as long).
PAGE_SEND_DEADLINE = 60.0
# A page of a `ps` listing: the sessions read, shaped and sent at a time.
PS_PAGE = 200

# How the slot manager's refusals are answered on the wire (their messages as they are).
ERROR_CODES: dict[type[SlotdError], str] = {
    InvalidArgument: ErrorCode.INVALID_ARGUMENT,
    InvalidState: ErrorCode.INVALID_STATE,
    SlotsFull: ErrorCode.SLOTS_FULL,
    StorageFull: ErrorCode.STORAGE_ERROR,
}


def request_error(error: SlotdError) -> RequestError:
    """The error reply for one of the slot manager's refusals (ERROR_CODES)."""
    code = next(ERROR_CODES[kind] for kind in type(error).__mro__ if kind in ERROR_CODES)
    return RequestError(code, str(error))


def read_page(reader: Reader, session_id: str, after: int, streams: list[str] | None, since_ts: float | None = None) -> list[Row]:
    return reader.rows_after(session_id, after, PAGE_ROWS, streams, since_ts, max_bytes=PAGE_BYTES)


def is_full(page: list[Row]) -> bool:
    """True if a page stopped at its limit (rows or bytes), so more may follow it."""
    return len(page) >= PAGE_ROWS or sum(len(row.data) for row in page) >= PAGE_BYTES


class PageSent(NamedTuple):
    """What a page sent to a client leaves behind (the page itself is gone by then)."""

    rows: int
    last_seq: int | None  # of the last row read, sent or not
    full: bool  # it stopped at its limit: more may follow


# What a daemon on its way out still answers.
READ_ONLY_COMMANDS = frozenset({"ps", "show", "logs", "follow", "info"})


def row_message(row: Row) -> dict[str, Any]:
    return {"seq": row.seq, "ts": iso_from_unix(row.ts), "stream": row.stream, **encode_data(row.data)}


def plain_row(row: Row) -> dict[str, Any]:
    return {"row": row_message(row)}


def count_lines(data: bytes) -> int:
    return data.count(b"\n")


def tail_start(reader: Reader, session_id: str, lines: int, streams: list[str] | None) -> tuple[int, int, int]:
    """Where the last `lines` lines begin: (the first row's seq, how many newlines to cut
    from the front of that row, the last seq looked at). Read backwards a page at a
    time, keeping nothing but counts: a tail of many lines costs a page, not the lines.

    A final line without a newline (a prompt) counts as a line.
    """
    last_seq = reader.last_seq(session_id)
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


def sessions_json(sessions: list[Session]) -> list[dict[str, Any]]:
    return [session_view(session) for session in sessions]


def read_unended(reader: Reader, statuses: list[str], labels: dict[str, Any] | None, limit: int | None) -> list[dict[str, Any]]:
    """Every session not ended of these statuses, as JSON (in the reader's thread: a
    page of sessions costs milliseconds to convert, which the event loop must not pay)."""
    return sessions_json(reader.list_sessions(statuses, labels, limit))


def read_ended_page(
    reader: Reader, statuses: list[str] | None, labels: dict[str, Any] | None, after: EndedCursor | None, limit: int
) -> tuple[list[dict[str, Any]], EndedCursor | None]:
    """A page of ended sessions as JSON, and the cursor to carry on from (None at the end)."""
    sessions, cursor = reader.ended_page(statuses, labels, after, limit)
    return sessions_json(sessions), cursor


def read_follow_page(reader: Reader, session_id: str, after: int, streams: list[str] | None) -> tuple[Session | None, list[Row]]:
    """The session as it is, then its rows after `after`: in that order, so a session
    seen ended has all its rows in the page (its end is committed with them)."""
    session = reader.get_session(session_id)
    return session, read_page(reader, session_id, after, streams)


class Commands:
    def __init__(
        self,
        config: Config,
        slots: SlotManager,
        readers: ReaderPool,
        writer: DatabaseWriter,
        ingestor: Ingestor,
        request_shutdown: Callable[[str | None], None],
    ) -> None:
        self.config = config
        self.slots = slots
        self.readers = readers
        self.writer = writer
        self.ingestor = ingestor
        self.request_shutdown = request_shutdown
        self.shutting_down = False
        self.page_slots = trio.Semaphore(PAGES_IN_FLIGHT)
        self.started_monotonic = time.monotonic()
        self.started_at = utc_now()

    async def handle(self, request: Request, emit: Emit) -> Any:
        if self.shutting_down and request.command not in READ_ONLY_COMMANDS:
            raise RequestError(ErrorCode.SHUTTING_DOWN, f"slotd is shutting down: {request.command} refused (reads still work)")
        try:
            return await HANDLERS[type(request)](self, request, emit)
        except tuple(ERROR_CODES) as error:
            raise request_error(error) from None

    async def _session(self, prefix: str) -> Session:
        try:
            session = await self.readers.run(Reader.find_session, prefix)
        except AmbiguousPrefix as error:
            raise RequestError(
                ErrorCode.AMBIGUOUS_ID, f"{error} ({', '.join(error.matches[:5])}): give more of the id"
            ) from None
        if session is None:
            raise RequestError(ErrorCode.NOT_FOUND, f"no session with id or prefix {prefix!r}")
        return session

    async def _send_page(
        self, emit: Emit, fetch: Callable[[], Awaitable[list[Row]]], shape: Callable[[Row], dict[str, Any] | None]
    ) -> PageSent:
        """Read a page and send its rows (shaped; None skips one), holding one of the
        daemon's page slots meanwhile, so that clients that read slowly or not at all
        hold PAGES_IN_FLIGHT pages at most between them."""
        async with self.page_slots:
            page = await fetch()
            sent = 0
            # One deadline for the whole page, not per piece sent: a client that takes
            # a row now and then must not keep a page slot for hours.
            with trio.move_on_after(PAGE_SEND_DEADLINE) as sending:
                for row in page:
                    message = shape(row)
                    if message is not None:
                        await emit(message)
                        sent += 1
            if sending.cancelled_caught:
                raise ClientStalled(f"took {PAGE_SEND_DEADLINE:g}s over one page of transcript ({sent} of {len(page)} rows)")
            return PageSent(sent, page[-1].seq if page else None, is_full(page))

    async def _current(self, session_id: str) -> dict[str, Any]:
        session = await self.readers.run(Reader.get_session, session_id)
        if session is None:
            raise RequestError(ErrorCode.NOT_FOUND, f"session {session_id} was deleted")
        return self._with_live_state(session)

    def _live_state(self, session_id: str) -> LiveState:
        """What only the daemon's memory knows of a session (all None for one not live)."""
        live = self.slots.live.get(session_id)
        return LiveState(output_blocked=live.output_note()) if live is not None else LiveState()

    def _with_live_state(self, session: Session) -> dict[str, Any]:
        """The session object, with what only the daemon's memory knows of a live one."""
        return session_view(session, self._live_state(session.id))

    # -- sessions ------------------------------------------------------------------

    async def cmd_start(self, request: StartRequest, emit: Emit) -> Any:
        session = await self.slots.queue.submit(request.argv, request.cwd, request.env, request.labels, request.priority, request.queue)
        return session_view(session)

    async def cmd_ps(self, request: PsRequest, emit: Emit) -> Any:
        statuses = [request.status] if isinstance(request.status, str) else request.status
        # Like `docker ps`: what runs and waits, and only the latest of what ended.
        recent_only = not (statuses or request.all)
        listed: list[dict[str, Any]] = []

        async def deliver(page: list[dict[str, Any]]) -> None:
            if request.stream:
                with trio.move_on_after(PAGE_SEND_DEADLINE) as sending:
                    await emit(*({"session": session} for session in page))
                if sending.cancelled_caught:
                    raise ClientStalled(f"took {PAGE_SEND_DEADLINE:g}s over one page of {len(page)} sessions")
            else:
                listed.extend(page)
                if len(listed) > PS_REPLY_MAX:
                    raise RequestError(
                        ErrorCode.TOO_LARGE,
                        f"ps: more than {PS_REPLY_MAX} sessions match, too many for one reply: "
                        'ask with "stream": true (as slotctl does) or a limit',
                    )

        count = await self._list_sessions(statuses, request.labels, request.limit, PS_RECENT_ENDED if recent_only else None, deliver)
        hidden = max(await self.readers.run(Reader.count_ended, request.labels) - PS_RECENT_ENDED, 0) if recent_only else 0
        if request.stream:
            return {"listed": count, "hidden": hidden}
        return {"sessions": listed, "hidden": hidden} if request.count_hidden else listed

    async def _list_sessions(
        self,
        statuses: list[str] | None,
        labels: dict[str, Any] | None,
        limit: int | None,
        ended_cap: int | None,
        deliver: Callable[[list[dict[str, Any]]], Awaitable[None]],
    ) -> int:
        """Hand deliver the sessions `ps` lists, in its order, a page at a time, each page
        read and delivered under one of the daemon's page slots; how many were listed.

        The sessions not ended (as many as slots and the queue hold) come in one page
        read at once; the ended ones follow, PS_PAGE at a time (at most ended_cap of
        them), the latest first. A session listed as live or queued that ends meanwhile
        is not listed again among the ended ones: each is listed once.
        """
        remaining = limit if limit is not None else math.inf
        unended = [status for status in ALL_STATUSES if status not in ENDED_STATUSES and (not statuses or status in statuses)]
        ended = [status for status in ENDED_STATUSES if not statuses or status in statuses]
        listed = 0
        seen: set[str] = set()
        if unended and remaining:
            async with self.page_slots:
                page = await self.readers.run(read_unended, unended, labels, limit)
                seen = {session["id"] for session in page}
                await deliver(self._with_output_blocked(page))
                listed += len(page)
                remaining -= len(page)
        cursor: EndedCursor | None = None
        ended_left = ended_cap if ended_cap is not None else math.inf
        while ended and remaining and ended_left:
            async with self.page_slots:
                size = int(min(PS_PAGE, remaining, ended_left))
                page, cursor = await self.readers.run(read_ended_page, ended if statuses else None, labels, cursor, size)
                page = [session for session in page if session["id"] not in seen]
                ended_left -= len(page)
                await deliver(self._with_output_blocked(page))
                listed += len(page)
                remaining -= len(page)
            if cursor is None:
                break
        return listed

    def _with_output_blocked(self, sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Session objects given what only the daemon's memory knows of a live one."""
        for session in sessions:
            session.update(self._live_state(session["id"])._asdict())
        return sessions

    async def cmd_show(self, request: ShowRequest, emit: Emit) -> Any:
        session = await self._session(request.session)
        stats = await self.readers.run(Reader.transcript_stats, session.id)
        return {**self._with_live_state(session), "transcript": stats}

    async def cmd_stop(self, request: StopRequest, emit: Emit) -> Any:
        session = await self._session(request.session)
        await self.slots.controls.stop(session, request.timeout, request.wait)
        return await self._current(session.id)

    async def cmd_kill(self, request: KillRequest, emit: Emit) -> Any:
        session = await self._session(request.session)
        await self.slots.controls.kill(session, signal_number(request.signal))
        return await self._current(session.id)

    async def cmd_pause(self, request: PauseRequest, emit: Emit) -> Any:
        session = await self._session(request.session)
        await self.slots.controls.pause(session)
        return await self._current(session.id)

    async def cmd_resume(self, request: ResumeRequest, emit: Emit) -> Any:
        session = await self._session(request.session)
        await self.slots.controls.resume(session)
        return await self._current(session.id)

    async def cmd_cancel(self, request: CancelRequest, emit: Emit) -> Any:
        session = await self._session(request.session)
        await self.slots.controls.cancel(session)
        return await self._current(session.id)

    async def cmd_delete(self, request: DeleteRequest, emit: Emit) -> Any:
        try:
            session = await self._session(request.session)
        except DamagedRow as error:
            # A row edited into nonsense can still be deleted (if it is not live).
            session_id = error.session_id
            live = self.slots.live.get(session_id)
            if live is not None and not live.final:
                raise
            # Its end may be read but not yet committed (with its last rows): those
            # must not land after the row is gone.
            await self.ingestor.commit_now()
            await self.writer.run(self.writer.store.delete_session, session_id)
            self.ingestor.forget(session_id)
            return {"deleted": session_id}
        if not session.is_ended:
            raise RequestError(
                ErrorCode.INVALID_STATE, f"cannot delete session {session.id}: it is {session.status} (stop or cancel it first)"
            )
        await self.writer.run(self.writer.store.delete_session, session.id)
        self.ingestor.forget(session.id)
        return {"deleted": session.id}

    async def cmd_send(self, request: SendRequest, emit: Emit) -> Any:
        session = await self._session(request.session)
        data = request.data.encode()
        if request.data_b64 is not None:
            try:
                data += base64.b64decode(request.data_b64, validate=True)
            except binascii.Error:
                raise RequestError(ErrorCode.INVALID_ARGUMENT, "send: 'data_b64' is not valid base64") from None
        await self.slots.controls.send(session, data, request.eof)
        return {"sent": len(data), "eof": request.eof}

    async def cmd_prune(self, request: PruneRequest, emit: Emit) -> Any:
        statuses = request.status or list(ENDED_STATUSES)
        if isinstance(statuses, str):
            statuses = [statuses]
        not_ended = [s for s in statuses if s not in ENDED_STATUSES]
        if not_ended:
            raise RequestError(ErrorCode.INVALID_ARGUMENT, f"prune: only ended sessions can be pruned, not {', '.join(not_ended)}")
        before = None
        if request.older_than is not None:
            if request.older_than > time.time():
                return {"deleted": []}  # older than the epoch: nothing is
            before = iso_from_unix(time.time() - request.older_than)
        deleted = await self.writer.run(self.writer.store.prune, before, statuses)
        for session_id in deleted:
            self.ingestor.forget(session_id)
        return {"deleted": deleted}

    # -- transcripts ---------------------------------------------------------------

    async def cmd_logs(self, request: LogsRequest, emit: Emit) -> Any:
        if request.tail is not None and (request.since_seq is not None or request.since_time is not None):
            raise RequestError(ErrorCode.INVALID_ARGUMENT, "logs: 'tail' cannot be combined with 'since_seq' or 'since_time'")
        session = await self._session(request.session)
        streams = [request.stream] if request.stream else None
        sent = 0
        last_seq = 0
        if request.tail is not None:
            first, cut, last_seq = await self.readers.run(tail_start, session.id, request.tail, streams)
            after = first - 1

            def tail_row(row: Row) -> dict[str, Any] | None:
                trimmed = row.seq == first and cut > 0
                if trimmed:
                    row = Row(row.session_id, row.seq, row.ts, row.stream, cut_lines(row.data, cut))
                    if not row.data:
                        return None
                return {"row": {**row_message(row), "trimmed": trimmed}}

            while after < last_seq:

                async def tail_page() -> list[Row]:
                    return [row for row in await self.readers.run(read_page, session.id, after, streams) if row.seq <= last_seq]

                page = await self._send_page(emit, tail_page, tail_row)
                sent += page.rows
                if page.last_seq is None or not page.full:
                    break
                after = page.last_seq
        else:
            since_ts = None
            if request.since_time is not None:
                try:
                    since_ts = unix_from_iso(request.since_time)
                except ValueError:
                    raise RequestError(ErrorCode.INVALID_ARGUMENT, f"logs: 'since_time' is not an ISO 8601 time: {request.since_time!r}") from None
            after = request.since_seq or 0
            if since_ts is not None:
                after = max(after, await self.readers.run(Reader.seq_before_time, session.id, since_ts))
            # A follow carries on from here: at least what existed when we looked.
            last_seq = max(after, await self.readers.run(Reader.last_seq, session.id))
            while True:

                async def next_page() -> list[Row]:
                    return await self.readers.run(read_page, session.id, after, streams, since_ts)

                page = await self._send_page(emit, next_page, plain_row)
                if page.last_seq is not None:
                    after = page.last_seq
                    last_seq = max(last_seq, after)
                sent += page.rows
                if not page.full:
                    break
        return {"rows": sent, "last_seq": last_seq, "status": session.status}

    async def cmd_follow(self, request: FollowRequest, emit: Emit) -> Any:
        session = await self._session(request.session)
        streams = [request.stream] if request.stream else None
        after = request.since_seq
        current: Session | None = None
        while True:
            # Take the event before reading: a commit after this point wakes us.
            changed = self.ingestor.session_commit_event(session.id)

            async def follow_page() -> list[Row]:
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
            if current.is_ended:
                # A session's end is committed with its last rows: nothing more will come.
                return {**session_view(current), "last_seq": after}
            await changed.wait()

    # -- the daemon ----------------------------------------------------------------

    async def cmd_drain(self, request: DrainRequest, emit: Emit) -> Any:
        await self.slots.queue.set_draining(True)
        return await self.cmd_info(InfoRequest(), emit)

    async def cmd_undrain(self, request: UndrainRequest, emit: Emit) -> Any:
        await self.slots.queue.set_draining(False)
        return await self.cmd_info(InfoRequest(), emit)

    async def cmd_info(self, request: InfoRequest, emit: Emit) -> Any:
        queued = await self.readers.run(Reader.count_with_status, [Status.QUEUED])
        db_bytes = 0
        for suffix in ("", "-wal"):
            try:
                db_bytes += os.stat(f"{self.config.database}{suffix}").st_size
            except FileNotFoundError:
                pass
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime": round(time.monotonic() - self.started_monotonic, 3),
            "slots": self.config.slots,
            "busy": len(self.slots.live),
            "live": [
                {"slot": live.slot, "session": live.id, "status": live.status, "output_blocked": live.output_note()}
                for live in self.slots.live.by_slot()
            ],
            "queued": queued,
            "draining": self.slots.queue.draining,
            "ingest_lag": round(self.ingestor.lag(), 3),
            "rows_committed": self.ingestor.rows_committed,
            "database": str(self.config.database),
            "database_bytes": db_bytes,
            "socket": str(self.config.socket),
            "state_dir": str(self.config.state_dir),
            "runtime_dir": str(self.config.runtime_dir),
            "runtime_dir_free_bytes": free_bytes(self.config.runtime_dir),
            "config": str(self.config.source) if self.config.source else None,
            "on_shutdown": self.config.on_shutdown,
        }

    async def cmd_shutdown(self, request: ShutdownRequest, emit: Emit) -> Any:
        mode = request.mode or self.config.on_shutdown
        self.request_shutdown(mode)
        return {"shutting_down": True, "mode": mode}


Handler = Callable[[Commands, Any, Emit], Awaitable[Any]]

# The handler of each request class: every command in protocol.REQUESTS has one, taking
# that class (tests/test_commands.py checks both ways).
HANDLERS: dict[type[Request], Handler] = {
    StartRequest: Commands.cmd_start,
    PsRequest: Commands.cmd_ps,
    ShowRequest: Commands.cmd_show,
    LogsRequest: Commands.cmd_logs,
    FollowRequest: Commands.cmd_follow,
    SendRequest: Commands.cmd_send,
    StopRequest: Commands.cmd_stop,
    KillRequest: Commands.cmd_kill,
    PauseRequest: Commands.cmd_pause,
    ResumeRequest: Commands.cmd_resume,
    CancelRequest: Commands.cmd_cancel,
    DeleteRequest: Commands.cmd_delete,
    PruneRequest: Commands.cmd_prune,
    DrainRequest: Commands.cmd_drain,
    UndrainRequest: Commands.cmd_undrain,
    InfoRequest: Commands.cmd_info,
    ShutdownRequest: Commands.cmd_shutdown,
}

