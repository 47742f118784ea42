"""The handler of `wait`: return when sessions end (or reach a checkpoint), woken by
their changes as `follow` is, never by polling."""

from __future__ import annotations

import math
from typing import Any

import trio

from supervisor.commands.context import CommandContext, Emit
from supervisor.model import Status, session_view
from supervisor.protocol import ErrorCode, RequestError, WaitRequest
from supervisor.store import Reader, Session


def read_sessions(reader: Reader, session_ids: list[str]) -> list[Session | None]:
    """The sessions as they are now (None for one deleted), in one reader's turn."""
    return [reader.get_session(session_id) for session_id in session_ids]


def is_settled(session: Session, until: str) -> bool:
    """Nothing more to wait for: it has ended, or (until a checkpoint) it waits at one.
    An ended session settles a wait for a checkpoint too: it will never reach one."""
    return session.is_ended or (until == "checkpoint" and session.status == Status.WAITING_CHECKPOINT)


def is_done(sessions: list[Session], until: str, first: bool) -> bool:
    """Whether a wait for these sessions is over: all settled, or (first) one reached
    what was asked (the end, or a checkpoint; all settled when none can any more)."""
    settled = [session for session in sessions if is_settled(session, until)]
    if len(settled) == len(sessions):
        return True
    return first and any(until == "end" or not session.is_ended for session in settled)


async def wait_first(events: list[trio.Event]) -> None:
    """Return once any of the events is set."""
    async with trio.open_nursery() as nursery:

        async def one(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(one, event)


class WaitCommands(CommandContext):
    """The handler of wait."""

    async def cmd_wait(self, request: WaitRequest, emit: Emit) -> Any:
        # Resolved once: after a reconnect, a client asks again by the full ids it was sent.
        session_ids = list(dict.fromkeys([(await self._session(prefix)).id for prefix in request.sessions]))
        await emit({"waiting": session_ids})
        with trio.move_on_after(request.timeout if request.timeout is not None else math.inf) as waiting:
            while True:
                # Taken before reading: a change committed after the read wakes us. Only
                # a change of a session's record does: not its rows, thousands a second.
                events = [self.ingestor.record_event(session_id) for session_id in session_ids]
                sessions = await self._read_sessions(session_ids)
                if is_done(sessions, request.until, request.any):
                    break
                await wait_first(events)
        if waiting.cancelled_caught:
            sessions = await self._read_sessions(session_ids)
        return {
            "timed_out": not is_done(sessions, request.until, request.any),
            "sessions": [session_view(session) for session in sessions],
            "pending": [session.id for session in sessions if not is_settled(session, request.until)],
        }

    async def _read_sessions(self, session_ids: list[str]) -> list[Session]:
        sessions = await self.readers.run(read_sessions, session_ids)
        for session_id, session in zip(session_ids, sessions, strict=True):
            if session is None:
                raise RequestError(ErrorCode.NOT_FOUND, f"session {session_id} was deleted")
        return [session for session in sessions if session is not None]
