"""The control protocol, shared by the server (control.py) and the client (client.py).

Newline-delimited JSON over a Unix stream socket. A request is
``{"id": 1, "cmd": "ps", ...arguments}``; the final reply is
``{"id": 1, "ok": true, "result": ...}`` or
``{"id": 1, "ok": false, "error": {"code": "not_found", "message": "..."}}``.
Streaming commands (``logs``, ``follow``) first send any number of
``{"id": 1, "row": {...}}`` messages, one per transcript row; ``ps`` with ``stream``
sends ``{"id": 1, "session": {...}}`` messages the same way. docs/protocol.md
describes every command, argument and error code.

Each command has a request class (StartRequest, PsRequest, ...) whose fields are its
arguments and say how each is checked; parse_request checks a message and returns one.
"""

from __future__ import annotations

import copy
import json
import signal
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from supervisor.arguments import (
    LABELS,
    MEMORY_LIMIT,
    NICE,
    SESSION,
    SINCE_SEQ,
    STATUSES,
    STREAM,
    TIMEOUT,
    Arg,
    arg,
    is_argv,
    is_bool,
    is_env,
    is_int,
    is_labels,
    is_memory_limit,
    is_mode,
    is_nice,
    is_non_negative_int,
    is_number,
    is_runnable,
    is_signal,
    is_statuses,
    is_str,
    is_str_list,
    is_stream,
    is_terminal_side,
    is_timeout,
)
from supervisor.model import MAX_SLOTS, MAX_TERMINAL_SIDE

# The framing both sides share, in a module of its own (slotctl imports only that):
# re-exported here, where the daemon's side looks for the whole protocol.
from supervisor.wire import ALL_ERROR_CODES as ALL_ERROR_CODES
from supervisor.wire import EXITED_WHILE_BLOCKED as EXITED_WHILE_BLOCKED
from supervisor.wire import MAX_ID_BYTES as MAX_ID_BYTES
from supervisor.wire import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from supervisor.wire import PS_RECENT_ENDED as PS_RECENT_ENDED
from supervisor.wire import WAIT_UNTIL as WAIT_UNTIL
from supervisor.wire import ErrorCode as ErrorCode
from supervisor.wire import RequestError as RequestError
from supervisor.wire import decode_data as decode_data
from supervisor.wire import decode_message as decode_message
from supervisor.wire import encode_data as encode_data
from supervisor.wire import encode_message as encode_message
from supervisor.wire import error_reply as error_reply
from supervisor.wire import ok_reply as ok_reply

# The longest grace a stop may give before SIGKILL: a day, as config's stop_timeout.
MAX_STOP_TIMEOUT = 86400
# `ps` without "stream" answers with at most this many sessions in its one reply (about
# 600 KiB of JSON for plain sessions); a longer listing is streamed a session a message.
PS_REPLY_MAX = 1000
# How many sessions one `wait` may name (each costs the daemon a task while it waits).
MAX_WAIT_SESSIONS = 1000


class ClientStalled(Exception):
    """The client does not take what it asked for fast enough: it is let go (see the
    stall limits in control.py and commands.py)."""


# -- requests: one class per command, its fields the command's arguments -------------
# Each field says how its argument is checked; parse_request fills every field (with
# its default when the argument is absent or null), so the fields have no defaults here.


@dataclass(frozen=True, kw_only=True)
class Request:
    """A request that passed its command's checks."""

    command: ClassVar[str]


@dataclass(frozen=True, kw_only=True)
class SessionRequest(Request):
    """A request about one session."""

    session: str = arg(is_str, SESSION, required=True)


@dataclass(frozen=True, kw_only=True)
class StartRequest(Request):
    command = "start"
    argv: list[str] = arg(
        is_argv, "a non-empty list of strings without NUL characters (the command and its arguments)", required=True
    )
    cwd: str = arg(is_runnable, "an absolute directory path (a string without NUL characters)", required=True)
    env: dict[str, str] = arg(
        is_env,
        "an object of string values without NUL characters, named by non-empty strings without '=' or NUL",
        default={},
    )
    labels: dict[str, Any] = arg(is_labels, LABELS, default={})
    priority: int = arg(is_int, "an integer (higher starts first)", default=0)
    nice: int | None = arg(is_nice, f"{NICE}; absent or null: the daemon's session_nice")
    queue: bool = arg(is_bool, "true or false", default=True)
    tty: bool = arg(is_bool, "true to run the command on a pseudo-terminal", default=False)
    tty_cols: int | None = arg(is_terminal_side, f"the terminal's width in columns, 1 to {MAX_TERMINAL_SIDE}")
    tty_rows: int | None = arg(is_terminal_side, f"the terminal's height in rows, 1 to {MAX_TERMINAL_SIDE}")
    wait_started: bool = arg(
        is_bool, "true: if it starts now, answer once its command runs or could not start", default=False
    )
    inherit_env: bool = arg(
        is_bool, "true: the daemon's environment with env on top; false: env alone (slotctl's own)", default=True
    )
    timeout: float | None = arg(is_timeout, TIMEOUT)
    memory_limit: int | None = arg(is_memory_limit, MEMORY_LIMIT)


@dataclass(frozen=True, kw_only=True)
class RestartRequest(SessionRequest):
    command = "restart"


@dataclass(frozen=True, kw_only=True)
class PsRequest(Request):
    command = "ps"
    status: str | list[str] | None = arg(is_statuses, STATUSES)
    labels: dict[str, Any] | None = arg(is_labels, f"labels to match: {LABELS}")
    limit: int | None = arg(is_non_negative_int, "an integer >= 0")
    all: bool = arg(is_bool, f"true to list every ended session, not only the {PS_RECENT_ENDED} latest", default=False)
    count_hidden: bool = arg(
        is_bool, 'true for {"sessions": [...], "hidden": N} instead of the bare list', default=False
    )
    stream: bool = arg(
        is_bool,
        'true to receive each session as a {"session": {...}} message, then {"listed": N, "hidden": N}',
        default=False,
    )


@dataclass(frozen=True, kw_only=True)
class ShowRequest(SessionRequest):
    command = "show"


@dataclass(frozen=True, kw_only=True)
class LogsRequest(SessionRequest):
    command = "logs"
    tail: int | None = arg(is_non_negative_int, "a number of lines >= 0")
    since_seq: int | None = arg(is_non_negative_int, SINCE_SEQ)
    since_time: str | None = arg(is_str, "an ISO 8601 time")
    until_seq: int | None = arg(is_non_negative_int, "a sequence number >= 0 (rows up to it)")
    until_time: str | None = arg(is_str, "an ISO 8601 time (rows stamped before it)")
    stream: str | None = arg(is_stream, STREAM)


@dataclass(frozen=True, kw_only=True)
class FollowRequest(SessionRequest):
    command = "follow"
    since_seq: int = arg(is_non_negative_int, SINCE_SEQ, default=0)
    stream: str | None = arg(is_stream, STREAM)


@dataclass(frozen=True, kw_only=True)
class WaitRequest(Request):
    command = "wait"
    sessions: list[str] = arg(
        lambda v: is_str_list(v) and 0 < len(v) <= MAX_WAIT_SESSIONS,
        f"a list of 1 to {MAX_WAIT_SESSIONS} session ids or unique prefixes (strings)",
        required=True,
    )
    any: bool = arg(is_bool, "true to return when the first of them is done, not all", default=False)
    until: str = arg(
        lambda v: v in WAIT_UNTIL, '"end" (a session has ended) or "checkpoint" (it waits for a person)', default="end"
    )
    timeout: float | None = arg(
        lambda v: is_number(v) and v >= 0, "seconds >= 0 to wait at most; absent or null: as long as it takes"
    )


@dataclass(frozen=True, kw_only=True)
class SendRequest(SessionRequest):
    command = "send"
    data: str = arg(is_str, "text to write to the session's stdin", default="")
    data_b64: str | None = arg(is_str, "base64 bytes to write to the session's stdin")
    eof: bool = arg(
        is_bool, "true to close the session's stdin after the data (on a terminal: to type Ctrl-D)", default=False
    )


@dataclass(frozen=True, kw_only=True)
class ResizeRequest(SessionRequest):
    command = "resize"
    cols: int = arg(is_terminal_side, f"the terminal's new width in columns, 1 to {MAX_TERMINAL_SIDE}", required=True)
    rows: int = arg(is_terminal_side, f"the terminal's new height in rows, 1 to {MAX_TERMINAL_SIDE}", required=True)


@dataclass(frozen=True, kw_only=True)
class ScreenRequest(SessionRequest):
    command = "screen"


@dataclass(frozen=True, kw_only=True)
class StopRequest(SessionRequest):
    command = "stop"
    timeout: float | None = arg(
        lambda v: is_number(v) and 0 <= v <= MAX_STOP_TIMEOUT, f"seconds from 0 to {MAX_STOP_TIMEOUT} before SIGKILL"
    )
    wait: bool = arg(is_bool, "true or false", default=True)


@dataclass(frozen=True, kw_only=True)
class KillRequest(SessionRequest):
    command = "kill"
    signal: int | str = arg(is_signal, "a signal name (TERM, SIGKILL) or number", default="SIGKILL")


@dataclass(frozen=True, kw_only=True)
class PauseRequest(SessionRequest):
    command = "pause"


@dataclass(frozen=True, kw_only=True)
class ResumeRequest(SessionRequest):
    command = "resume"


@dataclass(frozen=True, kw_only=True)
class CancelRequest(SessionRequest):
    command = "cancel"


@dataclass(frozen=True, kw_only=True)
class EditRequest(SessionRequest):
    command = "edit"
    argv: list[str] | None = arg(is_argv, "a new command: a non-empty list of strings without NUL characters")
    cwd: str | None = arg(is_runnable, "a new working directory: an absolute path")
    env: dict[str, str] | None = arg(is_env, "a new environment (replaces the old one whole), as start's env")
    labels: dict[str, Any] | None = arg(is_labels, f"new labels (replace the old ones whole): {LABELS}")
    priority: int | None = arg(is_int, "a new priority (higher starts first)")


@dataclass(frozen=True, kw_only=True)
class LabelRequest(SessionRequest):
    command = "label"
    set: dict[str, Any] = arg(is_labels, f"labels to set: {LABELS}", default={})
    delete: list[str] = arg(is_str_list, "names of labels to remove", default=[])


@dataclass(frozen=True, kw_only=True)
class DeleteRequest(SessionRequest):
    command = "delete"


@dataclass(frozen=True, kw_only=True)
class PruneRequest(Request):
    command = "prune"
    older_than: float | None = arg(lambda v: is_number(v) and v >= 0, "an age in seconds >= 0")
    status: str | list[str] | None = arg(is_statuses, STATUSES)


@dataclass(frozen=True, kw_only=True)
class DrainRequest(Request):
    command = "drain"


@dataclass(frozen=True, kw_only=True)
class UndrainRequest(Request):
    command = "undrain"


@dataclass(frozen=True, kw_only=True)
class InfoRequest(Request):
    command = "info"


@dataclass(frozen=True, kw_only=True)
class ShutdownRequest(Request):
    command = "shutdown"
    mode: str | None = arg(is_mode, '"keep" or "stop"')


@dataclass(frozen=True, kw_only=True)
class SlotsRequest(Request):
    command = "slots"
    count: int = arg(
        lambda v: is_int(v) and 1 <= v <= MAX_SLOTS,
        f"an integer from 1 to {MAX_SLOTS} (sessions at once)",
        required=True,
    )


# Every command, in the order the unknown-command message lists them.
REQUESTS: dict[str, type[Request]] = {
    request.command: request
    for request in (
        StartRequest,
        PsRequest,
        ShowRequest,
        LogsRequest,
        FollowRequest,
        WaitRequest,
        SendRequest,
        ScreenRequest,
        ResizeRequest,
        StopRequest,
        KillRequest,
        PauseRequest,
        ResumeRequest,
        CancelRequest,
        EditRequest,
        LabelRequest,
        RestartRequest,
        DeleteRequest,
        PruneRequest,
        DrainRequest,
        UndrainRequest,
        SlotsRequest,
        InfoRequest,
        ShutdownRequest,
    )
}
# Each command's arguments, in field order: how parse_request checks them.
COMMANDS: dict[str, dict[str, Arg]] = {
    name: {f.name: f.metadata["arg"] for f in fields(request)} for name, request in REQUESTS.items()
}

STREAMING_COMMANDS = frozenset({"logs", "follow", "wait"})
ENVELOPE_KEYS = frozenset({"id", "cmd"})


def request_id_of(message: Any) -> Any:
    """The id to copy into the replies: the request's, unless it is no request or its id
    is over MAX_ID_BYTES (copied into every row of a stream, a large id would multiply
    what the daemon sends)."""
    if not isinstance(message, dict):
        return None
    request_id = message.get("id")
    if len(json.dumps(request_id, separators=(",", ":"))) > MAX_ID_BYTES:
        return None
    return request_id


def parse_request(message: Any) -> tuple[Any, Request]:
    """Validate a decoded request; return its id and the command's request, every
    argument filled in (with its default if absent)."""
    if not isinstance(message, dict):
        raise RequestError(ErrorCode.BAD_REQUEST, "a request must be a JSON object")
    request_id = request_id_of(message)
    if request_id is None and message.get("id") is not None:
        raise RequestError(ErrorCode.BAD_REQUEST, f'the request "id" is over {MAX_ID_BYTES} bytes as JSON')
    command = message.get("cmd")
    if not isinstance(command, str):
        raise RequestError(ErrorCode.BAD_REQUEST, 'a request needs "cmd", a string')
    spec = COMMANDS.get(command)
    if spec is None:
        raise RequestError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {command!r} (known: {', '.join(COMMANDS)})")
    args: dict[str, Any] = {}
    for key, value in message.items():
        if key in ENVELOPE_KEYS:
            continue
        arg = spec.get(key)
        if arg is None:
            known = ", ".join(spec) or "none"
            raise RequestError(ErrorCode.INVALID_ARGUMENT, f"{command}: unknown argument {key!r} (known: {known})")
        if value is None and not arg.required:
            continue
        if not arg.check(value):
            raise RequestError(
                ErrorCode.INVALID_ARGUMENT, f"{command}: {key!r} must be {arg.expected}, got {value!r}"[:500]
            )
        args[key] = value
    for key, arg in spec.items():
        if key not in args:
            if arg.required:
                raise RequestError(ErrorCode.INVALID_ARGUMENT, f"{command}: missing argument {key!r} ({arg.expected})")
            args[key] = copy.deepcopy(arg.default)
    return request_id, REQUESTS[command](**args)


def signal_number(value: int | str) -> int:
    if isinstance(value, int):
        return value
    name = value.upper()
    return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
