"""The wire format both ends of the control socket share: one JSON object per line,
bounded in size; replies; error codes; transcript bytes in JSON. protocol.py adds the
commands and their arguments; slotctl, which needs only this, starts faster without them.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from supervisor import jsonlimits
from supervisor.errors import SlotdError

MAX_MESSAGE_BYTES = 1 << 20
# A request id, as compact JSON: it is copied into every reply and streamed row.
MAX_ID_BYTES = 1024
# `ps` without a status filter or "all" lists this many ended sessions, the latest.
PS_RECENT_ENDED = 20
# What a `wait` waits for: the sessions' ends, or their reaching a checkpoint.
WAIT_UNTIL = ("end", "checkpoint")
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
