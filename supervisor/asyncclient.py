"""The control socket from async code: the protocol client of supervisor/client.py on
anyio's Unix socket streams, so a request waiting for the daemon never holds a thread,
and cancelling it (an MCP client or a browser gave up) closes its connection. Used by
the MCP server (supervisor/mcpserver) and the dashboard (supervisor/dashboard); anyio
comes with either extra."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from supervisor.client import DaemonUnavailable, request_line, result_of, unreachable
from supervisor.wire import decode_message

# The longest reply line taken: one holds at most 1,000 sessions (a `ps` without
# `stream`) or one row of 64 KiB as base64, far below this.
MAX_REPLY_BYTES = 64 * 1024 * 1024
# How often a lost daemon is tried again while a wait has time left.
RECONNECT_INTERVAL = 0.2


class Connection:
    """One connection to the daemon: a request at a time, replies as they come."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._next_id = 1

    async def receive(self) -> dict[str, Any]:
        try:
            line = await self._reader.receive_until(b"\n", MAX_REPLY_BYTES)
        except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError):
            # Closed, perhaps mid-message (a daemon that restarted, or let us go).
            raise ConnectionError("the daemon closed the connection") from None
        except anyio.DelimiterNotFound:
            raise ConnectionError(f"the daemon sent a reply over {MAX_REPLY_BYTES} bytes") from None
        return decode_message(line)

    async def send(self, cmd: str, args: dict[str, Any]) -> None:
        request_id = self._next_id
        self._next_id += 1
        try:
            await self._stream.send(request_line(request_id, cmd, args))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise ConnectionError("the daemon closed the connection") from None

    async def messages(self, cmd: str, on_message: Callable[[dict[str, Any]], None], **args: Any) -> Any:
        """Send one request and hand each message before its final reply (rows,
        sessions, `waiting`) to on_message; return the result or raise RemoteError."""
        await self.send(cmd, args)
        while True:
            message = await self.receive()
            if "ok" in message:
                return result_of(message)
            on_message(message)

    async def stream(self, cmd: str, **args: Any) -> AsyncIterator[dict[str, Any]]:
        """Send one request and yield each message before its final reply (rows,
        sessions); the final reply ends the iteration, or raises RemoteError."""
        await self.send(cmd, args)
        while True:
            message = await self.receive()
            if "ok" in message:
                result_of(message)
                return
            yield message

    async def request(self, cmd: str, **args: Any) -> Any:
        """Send one request that brings only its final reply; return its result."""
        return await self.messages(cmd, ignore, **args)


def ignore(_message: dict[str, Any]) -> None:
    pass


class Daemon:
    """The daemon behind a socket path: a new connection per tool call, so calls run
    side by side (the daemon answers one request at a time per connection) and a
    restarted daemon is simply met on the next call."""

    def __init__(self, path: Path, where: str = "") -> None:
        self.path = path
        self.where = where  # why this socket (slotctl's explanation), for "not running"

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Connection]:
        try:
            stream = await anyio.connect_unix(self.path)
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as error:
            unavailable = unreachable(self.path, error)
            raise DaemonUnavailable(f"{unavailable}; {self.where}" if self.where else str(unavailable)) from None
        async with stream:
            yield Connection(stream)

    async def request(self, cmd: str, **args: Any) -> Any:
        async with self.connect() as connection:
            return await connection.request(cmd, **args)

    async def messages(self, cmd: str, on_message: Callable[[dict[str, Any]], None], **args: Any) -> Any:
        async with self.connect() as connection:
            return await connection.messages(cmd, on_message, **args)

    async def wait(self, session: str, until: str, seconds: float) -> dict[str, Any]:
        """The daemon's `wait` for one session, at most seconds long (its `timeout`);
        after a lost connection (the daemon restarted) asked again with its full id and
        the time left, as `slotctl wait` does, until the daemon answers or the time is up."""
        deadline = anyio.current_time() + seconds
        sessions = [session]
        reached = False  # a daemon that was never there is said at once, not waited for

        def resolved(message: dict[str, Any]) -> None:
            if "waiting" in message:
                sessions[:] = message["waiting"]

        while True:
            try:
                left = max(0.0, deadline - anyio.current_time())
                return await self.messages("wait", resolved, sessions=sessions, until=until, timeout=left)
            except (ConnectionError, DaemonUnavailable) as error:
                if isinstance(error, DaemonUnavailable) and not reached:
                    raise
                reached = True  # lost after it answered: it restarts, and is waited for
                if anyio.current_time() >= deadline:
                    raise DaemonUnavailable(
                        f"lost the daemon while waiting, and it did not come back within {seconds:g}s"
                    ) from None
                await anyio.sleep(RECONNECT_INTERVAL)
