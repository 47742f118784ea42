"""parse_request as a table: what each malformed request is answered with, no daemon needed."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.protocol import ErrorCode, RequestError, parse_request

CASES: list[tuple[Any, str, str]] = [
    # (message, error code, the start of the message)
    ([1, 2], ErrorCode.BAD_REQUEST, "a request must be a JSON object"),
    ({"id": 1}, ErrorCode.BAD_REQUEST, 'a request needs "cmd", a string'),
    ({"id": 1, "cmd": 7}, ErrorCode.BAD_REQUEST, 'a request needs "cmd", a string'),
    ({"id": "x" * 2000, "cmd": "info"}, ErrorCode.BAD_REQUEST, 'the request "id" is over 1024 bytes'),
    ({"cmd": "launch"}, ErrorCode.UNKNOWN_COMMAND, "unknown command 'launch' (known: start, ps,"),
    ({"cmd": "info", "verbose": True}, ErrorCode.INVALID_ARGUMENT, "info: unknown argument 'verbose' (known: none)"),
    ({"cmd": "show"}, ErrorCode.INVALID_ARGUMENT, "show: missing argument 'session'"),
    ({"cmd": "show", "session": None}, ErrorCode.INVALID_ARGUMENT, "show: 'session' must be"),
    ({"cmd": "start", "argv": [], "cwd": "/"}, ErrorCode.INVALID_ARGUMENT, "start: 'argv' must be a non-empty list"),
    ({"cmd": "start", "argv": ["a\0b"], "cwd": "/"}, ErrorCode.INVALID_ARGUMENT, "start: 'argv' must be"),
    (
        {"cmd": "start", "argv": ["true"], "cwd": "/", "priority": True},
        ErrorCode.INVALID_ARGUMENT,
        "start: 'priority' must be an integer",
    ),
    (
        {"cmd": "ps", "status": "sleeping"},
        ErrorCode.INVALID_ARGUMENT,
        "ps: 'status' must be a status or list of statuses",
    ),
    ({"cmd": "logs", "session": "a", "stream": "stdweird"}, ErrorCode.INVALID_ARGUMENT, "logs: 'stream' must be"),
    (
        {"cmd": "stop", "session": "a", "timeout": 86401},
        ErrorCode.INVALID_ARGUMENT,
        "stop: 'timeout' must be seconds from 0 to 86400",
    ),
    (
        {"cmd": "kill", "session": "a", "signal": "SIGNOPE"},
        ErrorCode.INVALID_ARGUMENT,
        "kill: 'signal' must be a signal name",
    ),
    ({"cmd": "shutdown", "mode": "later"}, ErrorCode.INVALID_ARGUMENT, "shutdown: 'mode' must be"),
    ({"cmd": "start", "argv": ["sh"], "cwd": "/", "tty": 1}, ErrorCode.INVALID_ARGUMENT, "start: 'tty' must be true"),
    (
        {"cmd": "start", "argv": ["sh"], "cwd": "/", "tty": True, "tty_cols": 0},
        ErrorCode.INVALID_ARGUMENT,
        "start: 'tty_cols' must be the terminal's width in columns, 1 to 1000",
    ),
    (
        {"cmd": "start", "argv": ["sh"], "cwd": "/", "tty": True, "tty_rows": 1001},
        ErrorCode.INVALID_ARGUMENT,
        "start: 'tty_rows' must be the terminal's height in rows, 1 to 1000",
    ),
]


@pytest.mark.parametrize(("message", "code", "start"), CASES, ids=[case[2][:40] for case in CASES])
def test_a_malformed_request_gets_its_error_code_and_a_message_naming_what_is_wrong(
    message: Any, code: str, start: str
) -> None:
    """parse_request refuses each malformed request with the error code and message docs/protocol.md promises."""
    with pytest.raises(RequestError) as refused:
        parse_request(message)
    assert refused.value.code == code
    assert refused.value.message.startswith(start), refused.value.message


def test_a_request_id_of_any_json_type_comes_back_as_it_was() -> None:
    """The id, whatever its JSON type, is returned as sent; an absent id is None."""
    for request_id in (1, "abc", [1, {"a": None}], None):
        assert parse_request({"id": request_id, "cmd": "info"})[0] == request_id
    assert parse_request({"cmd": "info"})[0] is None
