"""A blocking client for the control socket, used by slotctl, tests and benchmarks."""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from supervisor.config import load_config
from supervisor.errors import SlotdError
from supervisor.wire import encode_message


class DaemonUnavailable(SlotdError):
    """Nothing answers on the socket: the daemon is not running (or not here)."""


class RemoteError(SlotdError):
    """The daemon refused the request; code is one of protocol.ErrorCode."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def find_socket(socket_path: str | None = None, config_path: str | None = None) -> Path:
    """The daemon's socket: --socket, $SLOTD_SOCKET, else the one the config names."""
    if socket_path:
        return Path(socket_path)
    if os.environ.get("SLOTD_SOCKET"):
        return Path(os.environ["SLOTD_SOCKET"])
    return load_config(config_path).socket


class Client:
    """A blocking connection to the daemon: one request at a time, replies as they come."""

    def __init__(self, path: Path, timeout: float | None = None) -> None:
        self.path = path
        self._next_id = 1
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as error:
            self.sock.close()
            raise unreachable(path, error) from None
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, cmd: str, **args: Any) -> int:
        request_id = self._next_id
        self._next_id += 1
        try:
            self.sock.sendall(request_line(request_id, cmd, args))
        except BrokenPipeError:
            # Not BrokenPipeError: to slotctl that means its own stdout's reader left.
            raise ConnectionResetError(errno.EPIPE, "the daemon closed the connection") from None
        return request_id

    def receive(self) -> dict[str, Any]:
        line = self.reader.readline()
        if not line.endswith(b"\n"):
            # Closed, perhaps mid-message (a client that read too slowly is let go).
            raise ConnectionError("the daemon closed the connection")
        return json.loads(line)

    def messages(self, cmd: str, **args: Any) -> Iterator[dict[str, Any]]:
        """Every message the request brings: rows first, the final reply last."""
        self.send(cmd, **args)
        while True:
            message = self.receive()
            yield message
            if "ok" in message:
                return

    def request(self, cmd: str, **args: Any) -> Any:
        """Send one request; return its result or raise RemoteError."""
        for message in self.messages(cmd, **args):
            if "ok" in message:
                return result_of(message)
        raise ConnectionError("no reply")


def unreachable(path: Path, error: OSError) -> DaemonUnavailable:
    """Why connecting to the socket at path failed, as slotctl says it."""
    if isinstance(error, PermissionError):
        return DaemonUnavailable(f"permission denied on {path}: this user may not use that daemon")
    return DaemonUnavailable(f"slotd is not running (nothing listens on {path}: {error.strerror})")


def request_line(request_id: int, cmd: str, args: dict[str, Any]) -> bytes:
    """One request on the wire; arguments set to None are left out (they take their defaults)."""
    return encode_message({"id": request_id, "cmd": cmd, **{k: v for k, v in args.items() if v is not None}})


def result_of(message: dict[str, Any]) -> Any:
    if message["ok"]:
        return message["result"]
    error = message["error"]
    raise RemoteError(error["code"], error["message"])
