"""Handlers of the commands about sessions: start, list, show, control, delete, prune."""

from __future__ import annotations

import base64
import binascii
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import trio

from supervisor.arguments import MAX_LABELS_BYTES, is_labels
from supervisor.commands.context import PAGE_SEND_DEADLINE, CommandContext, Emit
from supervisor.model import (
    ALL_STATUSES,
    DEFAULT_TERMINAL_SIZE,
    ENDED_STATUSES,
    TerminalSize,
    iso_from_unix,
    session_view,
)
from supervisor.protocol import (
    PS_RECENT_ENDED,
    PS_REPLY_MAX,
    CancelRequest,
    ClientStalled,
    DeleteRequest,
    EditRequest,
    ErrorCode,
    KillRequest,
    LabelRequest,
    PauseRequest,
    PruneRequest,
    PsRequest,
    RequestError,
    ResizeRequest,
    RestartRequest,
    ResumeRequest,
    SendRequest,
    ShowRequest,
    StartRequest,
    StopRequest,
    signal_number,
)
from supervisor.runner import commit_briefly
from supervisor.store import DamagedRow, EndedCursor, Reader, Session

# A page of a `ps` listing: the sessions read, shaped and sent at a time.
PS_PAGE = 200


def sessions_json(sessions: list[Session]) -> list[dict[str, Any]]:
    return [session_view(session) for session in sessions]


class FirstPages(NamedTuple):
    """What `ps` lists first: the sessions not ended, the first page of the ended ones."""

    unended: list[dict[str, Any]]
    ended: list[dict[str, Any]]
    cursor: EndedCursor | None  # to carry on from after that page (None: no more)
    ended_count: int | None  # every ended session with the labels, when asked for


def read_first_pages(
    reader: Reader,
    unended: list[str],
    ended: list[str] | None,
    labels: dict[str, Any] | None,
    limit: int | None,
    ended_limit: int,
    count_ended: bool,
) -> FirstPages:
    """`ps`'s first read, as JSON, in one trip to a reader thread: each trip waits for
    that thread to wake and for the event loop to take the answer back, which under a
    busy CPU costs milliseconds apiece, and most listings need no second one. Converted
    in the reader's thread: a page of sessions costs milliseconds to convert, which the
    event loop must not pay.

    The sessions not ended of these statuses (up to limit) come first; then, if
    ended_limit is not 0, up to ended_limit ended ones (of the statuses `ended`, None
    for all), less any listed already (a session that ended meanwhile); then, with
    count_ended, how many ended sessions have the labels.
    """
    first = sessions_json(reader.list_sessions(unended, labels, limit)) if unended else []
    page: list[dict[str, Any]] = []
    cursor: EndedCursor | None = None
    if ended_limit:
        sessions, cursor = reader.ended_page(ended, labels, None, ended_limit)
        seen = {session["id"] for session in first}
        page = [session for session in sessions_json(sessions) if session["id"] not in seen]
    return FirstPages(first, page, cursor, reader.count_ended(labels) if count_ended else None)


def read_ended_page(
    reader: Reader, statuses: list[str] | None, labels: dict[str, Any] | None, after: EndedCursor | None, limit: int
) -> tuple[list[dict[str, Any]], EndedCursor | None]:
    """A page of ended sessions as JSON, and the cursor to carry on from (None at the end)."""
    sessions, cursor = reader.ended_page(statuses, labels, after, limit)
    return sessions_json(sessions), cursor


def terminal_of(request: StartRequest) -> TerminalSize | None:
    """The window size a start asks for, DEFAULT_TERMINAL_SIZE's where it says none; None
    for a session without a terminal."""
    if not request.tty:
        if request.tty_cols is not None or request.tty_rows is not None:
            raise RequestError(
                ErrorCode.INVALID_ARGUMENT,
                "start: 'tty_cols' and 'tty_rows' are a terminal's size: give them with \"tty\": true",
            )
        return None
    return TerminalSize(
        request.tty_cols or DEFAULT_TERMINAL_SIZE.cols,
        request.tty_rows or DEFAULT_TERMINAL_SIZE.rows,
    )


def terminal_of_session(session: Session) -> TerminalSize | None:
    """The window size a stored session runs at (None without a terminal)."""
    if not session.tty:
        return None
    return TerminalSize(session.tty_cols or DEFAULT_TERMINAL_SIZE.cols, session.tty_rows or DEFAULT_TERMINAL_SIZE.rows)


# How long `start` with wait_started waits for a started session's command to start.
START_VERDICT_WAIT = 10.0


class SessionCommands(CommandContext):
    """Handlers of the commands about sessions: start, ps, show, the controls, delete, send, prune."""

    async def cmd_start(self, request: StartRequest, emit: Emit) -> Any:
        session = await self.slots.queue.submit(
            request.argv,
            request.cwd,
            request.env,
            request.labels,
            request.priority,
            request.nice,
            request.queue,
            terminal=terminal_of(request),
            run_time=request.timeout,
            inherit_env=request.inherit_env,
            memory_limit=request.memory_limit,
        )
        live = self.slots.live.get(session.id)
        if request.wait_started and live is not None:
            # The verdict: the command runs (its pid is known), or it could not start.
            with trio.move_on_after(START_VERDICT_WAIT):
                await live.started.wait()
            await commit_briefly(self.ingestor)
            verdict: Session | None = await self.writer.run(self.writer.store.get_session, session.id)
            session = verdict or session
        return session_view(session)

    async def cmd_restart(self, request: RestartRequest, emit: Emit) -> Any:
        # As pueue restarts a task: a new session like the old one, which is left as it is.
        session = await self._session(request.session)
        session = await self.slots.queue.submit(
            session.argv,
            session.cwd,
            session.env,
            session.labels,
            session.priority,
            session.nice,
            True,
            terminal=terminal_of_session(session),
            run_time=session.timeout,
            memory_limit=session.memory_limit,
            inherit_env=session.inherit_env,
            restart_of=session.id,
        )
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

        # One reply holds at most PS_REPLY_MAX: reading one more than that says it is too
        # many, without reading (and shaping) a whole long queue first.
        limit = (
            request.limit
            if request.stream or (request.limit is not None and request.limit <= PS_REPLY_MAX)
            else PS_REPLY_MAX + 1
        )
        count, ended_count = await self._list_sessions(
            statuses, request.labels, limit, PS_RECENT_ENDED if recent_only else None, deliver, count_ended=recent_only
        )
        hidden = max((ended_count or 0) - PS_RECENT_ENDED, 0)
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
        count_ended: bool = False,
    ) -> tuple[int, int | None]:
        """Hand deliver the sessions `ps` lists, in its order, a page at a time, each page
        read and delivered under one of the daemon's page slots; return how many were
        listed, and how many ended sessions have the labels (with count_ended, else None).

        The sessions not ended (as many as slots and the queue hold) come in one page
        read at once, with the first page of the ended ones (read_first_pages); the
        ended ones follow, PS_PAGE at a time (at most ended_cap of them), the latest
        first. A session listed as live or queued that ends meanwhile is not listed
        again among the ended ones: each is listed once.
        """
        remaining = limit if limit is not None else math.inf
        unended = [
            status for status in ALL_STATUSES if status not in ENDED_STATUSES and (not statuses or status in statuses)
        ]
        ended = [status for status in ENDED_STATUSES if not statuses or status in statuses]
        ended_statuses = ended if statuses else None
        ended_left = ended_cap if ended_cap is not None else math.inf
        async with self.page_slots:
            # The ended page is read before it is known how many sessions the first one
            # lists: it may hold more than the limit leaves, and is cut below.
            first = await self.readers.run(
                read_first_pages,
                unended,
                ended_statuses if ended else None,
                labels,
                limit,
                int(min(PS_PAGE, remaining, ended_left)) if ended else 0,
                count_ended,
            )
            await deliver(self._with_output_blocked(first.unended))
            listed = len(first.unended)
            remaining -= listed
            page = first.ended[: int(min(len(first.ended), remaining))]
            ended_left -= len(page)
            await deliver(self._with_output_blocked(page))
            listed += len(page)
            remaining -= len(page)
        cursor = first.cursor
        seen = {session["id"] for session in first.unended}
        while cursor is not None and remaining and ended_left:
            async with self.page_slots:
                size = int(min(PS_PAGE, remaining, ended_left))
                page, cursor = await self.readers.run(read_ended_page, ended_statuses, labels, cursor, size)
                page = [session for session in page if session["id"] not in seen]
                ended_left -= len(page)
                await deliver(self._with_output_blocked(page))
                listed += len(page)
                remaining -= len(page)
        return listed, first.ended_count

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
                ErrorCode.INVALID_STATE,
                f"cannot delete session {session.id}: it is {session.status} (stop or cancel it first)",
            )
        await self.writer.run(self.writer.store.delete_session, session.id)
        self.ingestor.forget(session.id)
        return {"deleted": session.id}

    async def cmd_send(self, request: SendRequest, emit: Emit) -> Any:
        # A live session named by its whole id (as `attach` names it, a key at a time)
        # is found in memory: a database read per keystroke waits for a reader thread.
        live = self.slots.live.get(request.session)
        session = None if live is not None else await self._session(request.session)
        data = request.data.encode()
        if request.data_b64 is not None:
            try:
                data += base64.b64decode(request.data_b64, validate=True)
            except binascii.Error:
                raise RequestError(ErrorCode.INVALID_ARGUMENT, "send: 'data_b64' is not valid base64") from None
        if live is not None:
            await self.slots.controls.send_to_live(live, data, request.eof)
        else:
            assert session is not None
            await self.slots.controls.send(session, data, request.eof)
        return {"sent": len(data), "eof": request.eof}

    async def cmd_edit(self, request: EditRequest, emit: Emit) -> Any:
        session = await self._session(request.session)
        changes = {
            name: value
            for name in ("argv", "cwd", "env", "labels", "priority")
            if (value := getattr(request, name)) is not None
        }
        if not changes:
            raise RequestError(
                ErrorCode.INVALID_ARGUMENT, "edit: give at least one of argv, cwd, env, labels, priority"
            )
        if "cwd" in changes and not os.path.isabs(changes["cwd"]):
            raise RequestError(ErrorCode.INVALID_ARGUMENT, f"edit: 'cwd' must be an absolute path, got {request.cwd!r}")
        store = self.writer.store
        edited = await self.writer.run(store.transition, session.id, ("queued",), **changes)
        if edited is None:
            current = await self.writer.run(store.get_session, session.id)
            status = current.status if current else "deleted"
            raise RequestError(
                ErrorCode.INVALID_STATE,
                f"cannot edit session {session.id}: it is {status} (only a queued session can be edited; "
                "`label` changes the labels of any)",
            )
        self.slots.queue.wake()  # a new priority may put it first
        return session_view(edited)

    async def cmd_label(self, request: LabelRequest, emit: Emit) -> Any:
        session = await self._session(request.session)

        def relabel(labels: dict[str, Any]) -> dict[str, Any]:
            labels = {name: value for name, value in labels.items() if name not in request.delete}
            labels.update(request.set)
            if not is_labels(labels):
                raise RequestError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"label: the labels would exceed {MAX_LABELS_BYTES // 1024} KiB as compact JSON",
                )
            return labels

        relabelled = await self.writer.run(self.writer.store.change_labels, session.id, relabel)
        if relabelled is None:
            raise RequestError(ErrorCode.NOT_FOUND, f"session {session.id} was deleted")
        return session_view(relabelled)

    async def cmd_resize(self, request: ResizeRequest, emit: Emit) -> Any:
        session = await self._session(request.session)
        await self.slots.controls.resize(session, request.cols, request.rows)
        return {"tty_cols": request.cols, "tty_rows": request.rows}

    async def cmd_prune(self, request: PruneRequest, emit: Emit) -> Any:
        statuses = request.status or list(ENDED_STATUSES)
        if isinstance(statuses, str):
            statuses = [statuses]
        not_ended = [s for s in statuses if s not in ENDED_STATUSES]
        if not_ended:
            raise RequestError(
                ErrorCode.INVALID_ARGUMENT, f"prune: only ended sessions can be pruned, not {', '.join(not_ended)}"
            )
        before = None
        if request.older_than is not None:
            if request.older_than > time.time():
                return {"deleted": []}  # older than the epoch: nothing is
            before = iso_from_unix(time.time() - request.older_than)
        deleted = await self.writer.run(self.writer.store.prune, before, statuses)
        for session_id in deleted:
            self.ingestor.forget(session_id)
        return {"deleted": deleted}
