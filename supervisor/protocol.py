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

import base64
import copy
import json
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from supervisor import jsonlimits
from supervisor.errors import SlotdError
from supervisor.model import ALL_STATUSES, STREAMS

MAX_MESSAGE_BYTES = 1 << 20
# A request id, as compact JSON: it is copied into every reply and streamed row.
MAX_ID_BYTES = 1024
# The longest grace a stop may give before SIGKILL: a day, as config's stop_timeout.
MAX_STOP_TIMEOUT = 86400
# What a session's labels may take, as JSON.
MAX_LABELS_BYTES = 64 * 1024
# `ps` without a status filter or "all" lists this many ended sessions, the latest.
PS_RECENT_ENDED = 20
# `ps` without "stream" answers with at most this many sessions in its one reply (about
# 600 KiB of JSON for plain sessions); a longer listing is streamed a session a message.
PS_REPLY_MAX = 1000
# How output_blocked ends for a session whose command exited while its output waited
# for room (slotctl shows such a session as exited).
EXITED_WHILE_BLOCKED = "its command has exited; its exit status is recorded once its output is stored"


class ErrorCode:
    BAD_REQUEST = "bad_request"  # not JSON, nested too deeply, or not a JSON object
    TOO_LARGE = "too_large"  # a message over MAX_MESSAGE_BYTES, or over the daemon's budget
    UNKNOWN_COMMAND = "unknown_command"
    INVALID_ARGUMENT = "invalid_argument"  # missing, unknown or of the wrong type
    NOT_FOUND = "not_found"  # no session with that id or prefix
    AMBIGUOUS_ID = "ambiguous_id"  # a prefix that matches several sessions
    INVALID_STATE = "invalid_state"  # e.g. cancel a running session, delete a live one
    SLOTS_FULL = "slots_full"  # start with queue=false while every slot is busy
    PERMISSION_DENIED = "permission_denied"  # the peer's uid is not allowed
    STORAGE_ERROR = "storage_error"  # the database refused a write (disk full, I/O), or the runtime disk is full
    SHUTTING_DOWN = "shutting_down"  # the daemon is stopping
    TOO_MANY_CLIENTS = "too_many_clients"  # the daemon serves its most connections already
    INTERNAL_ERROR = "internal_error"  # a bug: the message says what failed


ALL_ERROR_CODES = [value for name, value in vars(ErrorCode).items() if name.isupper()]


class RequestError(SlotdError):
    """A request that cannot be carried out; becomes an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decode_message(line: bytes) -> Any:
    """Parse one message (jsonlimits.loads: bounded nesting, finite numbers)."""
    return jsonlimits.loads(line)


def encode_message(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def ok_reply(request_id: Any, result: Any) -> dict[str, Any]:
    return {"id": request_id, "ok": True, "result": result}


def error_reply(request_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


def encode_data(data: bytes) -> dict[str, str]:
    """Transcript bytes for JSON: as text when valid UTF-8, else base64; the field says which."""
    try:
        return {"data": data.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"data": base64.b64encode(data).decode("ascii"), "encoding": "base64"}


def decode_data(message: dict[str, Any]) -> bytes:
    if message.get("encoding") == "base64":
        return base64.b64decode(message["data"])
    return message["data"].encode("utf-8")


class ClientStalled(Exception):
    """The client does not take what it asked for fast enough: it is let go (see the
    stall limits in control.py and commands.py)."""


# -- arguments ---------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """How parse_request reads one argument: a value must pass check, else the error
    says it must be `expected`; an absent one is an error if required, else default."""

    check: Callable[[Any], bool]
    expected: str
    required: bool = False
    default: Any = None


INT64 = 1 << 63


def _is_int(value: Any) -> bool:
    # SQLite stores 64-bit integers: anything wider is refused here, not deep inside.
    return isinstance(value, int) and not isinstance(value, bool) and -INT64 <= value < INT64


def _is_str(value: Any) -> bool:
    return jsonlimits.is_text(value)


def _is_runnable(value: Any) -> bool:
    # The kernel takes argv, env and paths as C strings: a NUL cannot get through exec.
    return _is_str(value) and "\0" not in value


def _is_number(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return _is_int(value)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_str(item) for item in value)


def _is_argv(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and value[0] != "" and all(_is_runnable(item) for item in value)


def _is_env_name(value: Any) -> bool:
    # execve reads "NAME=value": a name with "=" or nothing before it would be misread.
    return _is_runnable(value) and value != "" and "=" not in value


def _is_env(value: Any) -> bool:
    return isinstance(value, dict) and all(_is_env_name(k) and _is_runnable(v) for k, v in value.items())


def _is_labels(value: Any) -> bool:
    if not (isinstance(value, dict) and jsonlimits.is_plain(value)):
        return False
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()) <= MAX_LABELS_BYTES


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_non_negative_int(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _is_statuses(value: Any) -> bool:
    items = [value] if isinstance(value, str) else value
    return _is_str_list(items) and all(item in ALL_STATUSES for item in items)


def _is_stream(value: Any) -> bool:
    return value in STREAMS


def _is_signal(value: Any) -> bool:
    if _is_int(value):
        return 0 < value < signal.NSIG
    if isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        return name in signal.Signals.__members__
    return False


def _is_mode(value: Any) -> bool:
    return value in ("keep", "stop")


def _one_of(names: tuple[str, ...]) -> str:
    """'"a", "b" or "c"': the names a message says an argument may be."""
    quoted = [f'"{name}"' for name in names]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


SESSION = "a session id or unique prefix (string)"
LABELS = f"a JSON object of at most {MAX_LABELS_BYTES // 1024} KiB as compact JSON (text that is UTF-8, integers within 64 bits)"
STATUSES = f"a status or list of statuses ({', '.join(ALL_STATUSES)})"
STREAM = _one_of(STREAMS)
SINCE_SEQ = "a sequence number >= 0 (rows after it)"


def arg(check: Callable[[Any], bool], expected: str, *, required: bool = False, default: Any = None) -> Any:
    """A request class's field for one argument, read as Arg says."""
    return field(metadata={"arg": Arg(check, expected, required, default)})


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

    session: str = arg(_is_str, SESSION, required=True)


@dataclass(frozen=True, kw_only=True)
class StartRequest(Request):
    command = "start"
    argv: list[str] = arg(_is_argv, "a non-empty list of strings without NUL characters (the command and its arguments)", required=True)
    cwd: str = arg(_is_runnable, "an absolute directory path (a string without NUL characters)", required=True)
    env: dict[str, str] = arg(_is_env, "an object of string values without NUL characters, named by non-empty strings without '=' or NUL", default={})
    labels: dict[str, Any] = arg(_is_labels, LABELS, default={})
    priority: int = arg(_is_int, "an integer (higher starts first)", default=0)
    queue: bool = arg(_is_bool, "true or false", default=True)


@dataclass(frozen=True, kw_only=True)
class PsRequest(Request):
    command = "ps"
    status: str | list[str] | None = arg(_is_statuses, STATUSES)
    labels: dict[str, Any] | None = arg(_is_labels, f"labels to match: {LABELS}")
    limit: int | None = arg(_is_non_negative_int, "an integer >= 0")
    all: bool = arg(_is_bool, f"true to list every ended session, not only the {PS_RECENT_ENDED} latest", default=False)
    count_hidden: bool = arg(_is_bool, 'true for {"sessions": [...], "hidden": N} instead of the bare list', default=False)
    stream: bool = arg(_is_bool, 'true to receive each session as a {"session": {...}} message, then {"listed": N, "hidden": N}', default=False)


@dataclass(frozen=True, kw_only=True)
class ShowRequest(SessionRequest):
    command = "show"


@dataclass(frozen=True, kw_only=True)
class LogsRequest(SessionRequest):
    command = "logs"
    tail: int | None = arg(_is_non_negative_int, "a number of lines >= 0")
    since_seq: int | None = arg(_is_non_negative_int, SINCE_SEQ)
    since_time: str | None = arg(_is_str, "an ISO 8601 time")
    stream: str | None = arg(_is_stream, STREAM)


@dataclass(frozen=True, kw_only=True)
class FollowRequest(SessionRequest):
    command = "follow"
    since_seq: int = arg(_is_non_negative_int, SINCE_SEQ, default=0)
    stream: str | None = arg(_is_stream, STREAM)


@dataclass(frozen=True, kw_only=True)
class SendRequest(SessionRequest):
    command = "send"
    data: str = arg(_is_str, "text to write to the session's stdin", default="")
    data_b64: str | None = arg(_is_str, "base64 bytes to write to the session's stdin")
    eof: bool = arg(_is_bool, "true to close the session's stdin after the data", default=False)


@dataclass(frozen=True, kw_only=True)
class StopRequest(SessionRequest):
    command = "stop"
    timeout: float | None = arg(lambda v: _is_number(v) and 0 <= v <= MAX_STOP_TIMEOUT, f"seconds from 0 to {MAX_STOP_TIMEOUT} before SIGKILL")
    wait: bool = arg(_is_bool, "true or false", default=True)


@dataclass(frozen=True, kw_only=True)
class KillRequest(SessionRequest):
    command = "kill"
    signal: int | str = arg(_is_signal, "a signal name (TERM, SIGKILL) or number", default="SIGKILL")


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
class DeleteRequest(SessionRequest):
    command = "delete"


@dataclass(frozen=True, kw_only=True)
class PruneRequest(Request):
    command = "prune"
    older_than: float | None = arg(lambda v: _is_number(v) and v >= 0, "an age in seconds >= 0")
    status: str | list[str] | None = arg(_is_statuses, STATUSES)


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
    mode: str | None = arg(_is_mode, '"keep" or "stop"')


# Every command, in the order the unknown-command message lists them.
REQUESTS: dict[str, type[Request]] = {
    request.command: request
    for request in (
        StartRequest,
        PsRequest,
        ShowRequest,
        LogsRequest,
        FollowRequest,
        SendRequest,
        StopRequest,
        KillRequest,
        PauseRequest,
        ResumeRequest,
        CancelRequest,
        DeleteRequest,
        PruneRequest,
        DrainRequest,
        UndrainRequest,
        InfoRequest,
        ShutdownRequest,
    )
}
# Each command's arguments, in field order: how parse_request checks them.
COMMANDS: dict[str, dict[str, Arg]] = {
    name: {f.name: f.metadata["arg"] for f in fields(request)} for name, request in REQUESTS.items()
}

STREAMING_COMMANDS = frozenset({"logs", "follow"})
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
            raise RequestError(ErrorCode.INVALID_ARGUMENT, f"{command}: {key!r} must be {arg.expected}, got {value!r}"[:500])
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
