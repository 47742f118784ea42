"""The control socket: a Unix stream server speaking newline-delimited JSON.

It checks each peer's uid (SO_PEERCRED), frames messages (at most 1 MiB each), and
passes each request to its handler in commands.py. A bad message gets an error reply
and the connection carries on; nothing a client sends can hurt the daemon or another
client.
"""

from __future__ import annotations

import grp
import os
import pwd
import select
import socket
import stat
import struct
from pathlib import Path
from collections.abc import Awaitable
from typing import Any

import apsw
import structlog
import trio

from supervisor.commands import Commands
from supervisor.protocol import (
    MAX_MESSAGE_BYTES,
    STREAMING_COMMANDS,
    ErrorCode,
    RequestError,
    decode_message,
    encode_message,
    error_reply,
    ok_reply,
    parse_request,
)

log = structlog.get_logger()

_UCRED = struct.Struct("3i")
RECEIVE_SIZE = 65536
# How often a stream whose client stopped sending checks that the client is still there.
HANGUP_POLL_INTERVAL = 2.0


class SocketPathError(Exception):
    """The socket cannot be bound where the configuration says."""


def peer_credentials(sock: trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel saw it connect."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return _UCRED.unpack(raw)


class PeerPolicy:
    """Who may talk to the daemon: its own uid, root, and members of socket_group."""

    def __init__(self, group_name: str | None) -> None:
        self.uid = os.getuid()
        self.gid: int | None = None
        self.members: set[str] = set()
        if group_name:
            group = grp.getgrnam(group_name)
            self.gid = group.gr_gid
            self.members = set(group.gr_mem)

    def allows(self, uid: int, gid: int) -> bool:
        if uid in (self.uid, 0):
            return True
        if self.gid is None:
            return False
        if gid == self.gid:
            return True
        try:
            return pwd.getpwuid(uid).pw_name in self.members
        except KeyError:
            return False


async def bind_socket(path: Path, group_name: str | None) -> trio.socket.SocketType:
    """Bind the control socket, replacing a stale one; mode 0600, or 0660 for a group."""
    if len(os.fsencode(path)) >= 108:
        raise SocketPathError(f"socket path is too long for a Unix socket ({len(os.fsencode(path))} bytes, at most 107): {path}")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            # Our lock is held, so whatever listened here is gone: a stale socket.
            path.unlink()
        else:
            raise SocketPathError(f"{path} exists and is not a socket; refusing to replace it")
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(os.fspath(path))
    finally:
        os.umask(old_umask)
    if group_name:
        os.chown(path, -1, grp.getgrnam(group_name).gr_gid)
        os.chmod(path, 0o660)
    else:
        os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def hung_up(sock: trio.socket.SocketType) -> bool:
    """True once the peer has closed its socket for good (not just its writing side)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLHUP)
    return any(events & select.POLLHUP for _fd, events in poller.poll(0))


class Connection:
    """One client: reads requests one after another and answers each."""

    def __init__(self, stream: trio.SocketStream, commands: Commands) -> None:
        self.stream = stream
        self.commands = commands
        self.buffer = bytearray()
        self.discarding = False

    async def send(self, message: dict[str, Any]) -> None:
        try:
            data = encode_message(message)
        except ValueError as error:  # e.g. a stored label of Infinity: not JSON
            log.error("reply_not_json", error=str(error))
            data = encode_message(
                error_reply(message.get("id"), ErrorCode.INTERNAL_ERROR, f"the reply cannot be sent as JSON: {error}")
            )
        await self.stream.send_all(data)

    async def next_line(self) -> bytes | None:
        """The next newline-terminated message, or None at end of stream.

        A message over the limit is answered with too_large and skipped up to its
        newline, so the connection stays usable.
        """
        while True:
            newline = self.buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self.buffer[:newline])
                del self.buffer[: newline + 1]
                if self.discarding:
                    self.discarding = False
                    continue
                if len(line) > MAX_MESSAGE_BYTES:
                    await self.send(error_reply(None, ErrorCode.TOO_LARGE, f"message over {MAX_MESSAGE_BYTES} bytes"))
                    continue
                return line
            if len(self.buffer) > MAX_MESSAGE_BYTES:
                if not self.discarding:
                    await self.send(error_reply(None, ErrorCode.TOO_LARGE, f"message over {MAX_MESSAGE_BYTES} bytes"))
                    self.discarding = True
                self.buffer.clear()
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                # The client half-closed: a last message without its newline still counts.
                last = bytes(self.buffer) if not self.discarding else b""
                self.buffer.clear()
                return last or None
            self.buffer += data

    async def serve(self) -> None:
        while (line := await self.next_line()) is not None:
            if not line.strip():
                continue
            await self.answer(line)

    async def stream_while_connected(self, handler: Awaitable[Any]) -> Any:
        """Run a streaming handler, ending it if the client hangs up meanwhile.

        A follow of a quiet session may wait for hours without sending anything: only
        reading from the client notices it is gone, and frees the task and its socket.
        Whatever the client sends meanwhile waits its turn in the buffer.
        """
        result: list[Any] = []
        try:
            async with trio.open_nursery() as nursery:

                async def run_handler() -> None:
                    result.append(await handler)
                    nursery.cancel_scope.cancel()

                async def watch_hangup() -> None:
                    while len(self.buffer) <= MAX_MESSAGE_BYTES:
                        data = await self.stream.receive_some(RECEIVE_SIZE)
                        if not data:
                            break  # end of its requests; it may still be reading
                        self.buffer += data
                    # A half-closed client (shutdown(SHUT_WR), `nc -N`) still reads the
                    # stream; one that closed altogether leaves the socket hung up.
                    while not hung_up(self.stream.socket):
                        await trio.sleep(HANGUP_POLL_INTERVAL)
                    raise trio.BrokenResourceError("the client hung up")

                nursery.start_soon(run_handler)
                nursery.start_soon(watch_hangup)
        except BaseExceptionGroup as group:
            # One task failed and the other was cancelled by it: hand on that one
            # failure as it is, so answer() treats it like any request's.
            if len(group.exceptions) != 1:
                raise
            raise group.exceptions[0] from None
        return result[0]

    async def answer(self, line: bytes) -> None:
        request_id = None
        try:
            try:
                message = decode_message(line)
            except (UnicodeDecodeError, ValueError) as error:
                raise RequestError(ErrorCode.BAD_REQUEST, f"not valid JSON: {error}") from None
            if isinstance(message, dict):
                request_id = message.get("id")
            request_id, command, args = parse_request(message)

            async def emit(item: dict[str, Any]) -> None:
                await self.send({"id": request_id, **item})

            if command in STREAMING_COMMANDS:
                result = await self.stream_while_connected(self.commands.handle(command, args, emit))
            else:
                result = await self.commands.handle(command, args, emit)
            reply = ok_reply(request_id, result)
        except RequestError as error:
            reply = error_reply(request_id, error.code, error.message)
        except apsw.Error as error:
            log.error("storage_error", error=str(error))
            reply = error_reply(request_id, ErrorCode.STORAGE_ERROR, f"the database refused: {error}")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception as error:
            # A bug must not take the daemon down: say what failed, keep serving.
            log.exception("request_failed", request=line[:200].decode(errors="replace"))
            reply = error_reply(request_id, ErrorCode.INTERNAL_ERROR, f"{type(error).__name__}: {error}")
        await self.send(reply)


async def serve(
    sock: trio.socket.SocketType,
    commands: Commands,
    policy: PeerPolicy,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                _pid, uid, gid = peer_credentials(stream.socket)
                if not policy.allows(uid, gid):
                    log.warning("peer_refused", uid=uid, gid=gid)
                    await stream.send_all(
                        encode_message(error_reply(None, ErrorCode.PERMISSION_DENIED, f"uid {uid} may not use this daemon"))
                    )
                    return
                await Connection(stream, commands).serve()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away: nothing to answer

    async with trio.open_nursery() as handlers:
        # Cancelling this scope stops accepting; open connections go on until the
        # daemon's nursery ends them.
        accepting = trio.CancelScope()
        task_status.started(accepting)
        with accepting:
            await trio.serve_listeners(handle, [listener], handler_nursery=handlers)
        await listener.aclose()
