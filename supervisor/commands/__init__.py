"""One handler per protocol command: check the arguments' meaning, act, shape the reply.

By concern: sessions (start, ps, show, stop, ...), transcripts (logs, follow), waiting
(wait), admin (drain, info, shutdown); context has what they share. Commands joins them,
and HANDLERS maps each request class to its handler.

Handlers know neither sockets (control.py) nor SQL (store.py): they call the slot
manager for anything that touches a session's processes and the reader pool for queries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from supervisor.commands.admin import DaemonCommands
from supervisor.commands.context import Emit
from supervisor.commands.sessions import SessionCommands
from supervisor.commands.transcripts import TranscriptCommands
from supervisor.commands.waiting import WaitCommands
from supervisor.errors import InvalidArgument, InvalidState, SlotdError, SlotsFull, StorageFull
from supervisor.protocol import (
    CancelRequest,
    DeleteRequest,
    DrainRequest,
    EditRequest,
    ErrorCode,
    FollowRequest,
    InfoRequest,
    KillRequest,
    LabelRequest,
    LogsRequest,
    PauseRequest,
    PruneRequest,
    PsRequest,
    Request,
    RequestError,
    ResizeRequest,
    RestartRequest,
    ResumeRequest,
    ScreenRequest,
    SendRequest,
    ShowRequest,
    ShutdownRequest,
    SlotsRequest,
    StartRequest,
    StopRequest,
    UndrainRequest,
    WaitRequest,
)

__all__ = ["HANDLERS", "Commands", "Emit"]

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


# What a daemon on its way out still answers.
READ_ONLY_COMMANDS = frozenset({"ps", "show", "logs", "follow", "screen", "wait", "info"})


class Commands(SessionCommands, TranscriptCommands, WaitCommands, DaemonCommands):
    """Every handler, and the one entry point control.py calls."""

    async def handle(self, request: Request, emit: Emit) -> Any:
        if self.shutting_down and request.command not in READ_ONLY_COMMANDS:
            raise RequestError(
                ErrorCode.SHUTTING_DOWN, f"slotd is shutting down: {request.command} refused (reads still work)"
            )
        try:
            return await HANDLERS[type(request)](self, request, emit)
        except tuple(ERROR_CODES) as error:
            raise request_error(error) from None


Handler = Callable[[Commands, Any, Emit], Awaitable[Any]]

# The handler of each request class: every command in protocol.REQUESTS has one, taking
# that class (tests/test_commands.py checks both ways).
HANDLERS: dict[type[Request], Handler] = {
    StartRequest: Commands.cmd_start,
    RestartRequest: Commands.cmd_restart,
    PsRequest: Commands.cmd_ps,
    ShowRequest: Commands.cmd_show,
    LogsRequest: Commands.cmd_logs,
    FollowRequest: Commands.cmd_follow,
    WaitRequest: Commands.cmd_wait,
    SendRequest: Commands.cmd_send,
    ScreenRequest: Commands.cmd_screen,
    ResizeRequest: Commands.cmd_resize,
    StopRequest: Commands.cmd_stop,
    KillRequest: Commands.cmd_kill,
    PauseRequest: Commands.cmd_pause,
    ResumeRequest: Commands.cmd_resume,
    CancelRequest: Commands.cmd_cancel,
    EditRequest: Commands.cmd_edit,
    LabelRequest: Commands.cmd_label,
    DeleteRequest: Commands.cmd_delete,
    PruneRequest: Commands.cmd_prune,
    DrainRequest: Commands.cmd_drain,
    UndrainRequest: Commands.cmd_undrain,
    SlotsRequest: Commands.cmd_slots,
    InfoRequest: Commands.cmd_info,
    ShutdownRequest: Commands.cmd_shutdown,
}
