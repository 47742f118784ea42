"""The control socket: a Unix stream server speaking newline-delimited JSON.

It checks each peer's uid (SO_PEERCRED), frames messages (at most 1 MiB each), and
passes each request to its handler in commands.py. A bad message gets an error reply
and the connection carries on; nothing a client sends can hurt the daemon or another
client. What clients make the daemon hold is bounded: unanswered requests by a budget
shared by all connections, replies by disconnecting a client that stops reading.
"""

from __future__ import annotations

import grp
import os
import pwd
import select
from collections.abc import Awaitable
from typing import Any

import apsw
import structlog
import trio

from supervisor.commands import Commands
from supervisor.jsonlimits import TooDeep
from supervisor.linux import peer_credentials
from supervisor.protocol import (
    MAX_MESSAGE_BYTES,
    STREAMING_COMMANDS,
    ClientStalled,
    ErrorCode,
    RequestError,
    decode_message,
    encode_message,
    error_reply,
    ok_reply,
    parse_request,
    request_id_of,
)

log = structlog.get_logger()

RECEIVE_SIZE = 65536
# What a reply is sent in: a client must take each piece within the stall timeout.
SEND_CHUNK = 65536
# Bytes of requests the daemon holds for all clients together (received, not yet
# answered); past it, the connection holding the most gets too_large and is closed.
REQUEST_BUDGET_BYTES = 64 << 20
# A client that takes none of a reply for this long is disconnected (as Redis does with
# client-output-buffer-limit): what the daemon prepared for it is freed. `slotctl logs
# -f` carries on from the last row it printed.
SEND_STALL_TIMEOUT = 60.0
# Clients served at once; one more is told too_many_clients and closed.
MAX_CONNECTIONS = 256
# How often a stream whose client stopped sending checks that the client is still there.
HANGUP_POLL_INTERVAL = 2.0


class PeerPolicy:
    """Who may talk to the daemon: its own uid, root, and members of socket_group."""

    def __init__(self, group_name: str | None) -> None:
        self.uid = os.getuid()
        self.gid: int | None = None
        # Looked up once: a user lookup (NSS, perhaps LDAP) per connection would run on
        # the event loop. A member added later counts after a restart, as for sshd.
        self.member_uids: set[int] = set()
        if group_name:
            group = grp.getgrnam(group_name)
            self.gid = group.gr_gid
            for name in group.gr_mem:
                try:
                    self.member_uids.add(pwd.getpwnam(name).pw_uid)
                except KeyError:
                    pass  # a member with no account: nobody to let in

    def allows(self, uid: int, gid: int) -> bool:
        if uid in (self.uid, 0):
            return True
        if self.gid is None:
            return False
        return gid == self.gid or uid in self.member_uids


def hung_up(sock: trio.socket.SocketType) -> bool:
    """True once the peer has closed its socket for good (not just its writing side)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLHUP)
    return any(events & select.POLLHUP for _fd, events in poller.poll(0))


def encode_reply(reply: dict[str, Any]) -> bytes:
    """A final reply as a line. One that cannot be JSON (a bug, or a stored value no
    check caught) becomes internal_error: the failure is the request's, not the daemon's."""
    try:
        return encode_message(reply)
    except (ValueError, TypeError, RecursionError) as error:
        log.error("reply_not_json", error=str(error))
        fallback = error_reply(reply.get("id"), ErrorCode.INTERNAL_ERROR, f"the reply cannot be sent as JSON: {error}")
        try:
            return encode_message(fallback)
        except (ValueError, TypeError, RecursionError):
            return encode_message({**fallback, "id": None})


class RequestBudget:
    """The bytes of requests the daemon holds for all its clients together (received
    and not yet answered), so that many clients sending slowly cannot exhaust memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._held: dict[Connection, int] = {}

    def hold(self, connection: Connection, size: int) -> None:
        """Record what a connection holds now; past the limit, refuse the biggest holder."""
        self.total += size - self._held.get(connection, 0)
        self._held[connection] = size
        if self.total > self.limit:
            biggest = max(self._held, key=self._held.__getitem__)
            biggest.refuse(
                ErrorCode.TOO_LARGE,
                f"the daemon holds {self.total} bytes of unanswered requests (at most {self.limit}); "
                f"this connection held the most ({self._held[biggest]})",
            )

    def forget(self, connection: Connection) -> None:
        self.total -= self._held.pop(connection, 0)


class Connection:
    """One client: reads requests one after another and answers each."""

    def __init__(
        self, stream: trio.SocketStream, commands: Commands, budget: RequestBudget, stall_timeout: float
    ) -> None:
        self.stream = stream
        self.commands = commands
        self.budget = budget
        self.stall_timeout = stall_timeout
        self.buffer = bytearray()
        self.scanned = 0  # the buffer's first bytes known to hold no newline
        self.answering = 0  # bytes of the request being answered
        self.discarding = False
        # Cancelled to end the connection from outside its task (refuse()).
        self.scope = trio.CancelScope()
        self.refused: tuple[str, str] | None = None  # (error code, why), once refused
        self.mid_message = False  # a message is being sent: nothing else may go out now

    def _account(self) -> None:
        self.budget.hold(self, len(self.buffer) + self.answering)

    def refuse(self, code: str, reason: str) -> None:
        """End this connection (its task notices at its next checkpoint); free its buffer now."""
        if self.refused is None:
            self.refused = (code, reason)
        self.buffer = bytearray()
        self.scanned = 0
        self.budget.forget(self)
        self.scope.cancel()

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message (encoding errors propagate to the request's handling)."""
        await self.send_bytes(encode_message(message))

    async def send_bytes(self, data: bytes) -> None:
        """Send data; ClientStalled if the client does not take a 64 KiB piece of it
        within stall_timeout.

        The daemon's memory for a client that does not read is what it has prepared to
        send (a page of transcript at most): a stalled client must not keep it forever.
        """
        view = memoryview(data)
        self.mid_message = True
        for start in range(0, len(view), SEND_CHUNK):
            with trio.move_on_after(self.stall_timeout) as waiting:
                await self.stream.send_all(view[start : start + SEND_CHUNK])
            if waiting.cancelled_caught:
                raise ClientStalled(
                    f"took none of a reply for {self.stall_timeout:g}s ({len(view) - start} bytes waiting)"
                )
        self.mid_message = False

    async def next_line(self) -> bytes | None:
        """The next newline-terminated message, or None at end of stream.

        A message over the limit is answered with too_large and skipped up to its
        newline, so the connection stays usable.
        """
        too_large = error_reply(None, ErrorCode.TOO_LARGE, f"message over {MAX_MESSAGE_BYTES} bytes")
        while True:
            # From where the last search stopped: a message sent a few bytes at a time
            # must not be rescanned whole at every receive.
            newline = self.buffer.find(b"\n", self.scanned)
            if newline < 0:
                self.scanned = len(self.buffer)
            else:
                line = bytes(self.buffer[:newline])
                del self.buffer[: newline + 1]
                self.scanned = 0
                if len(line) > MAX_MESSAGE_BYTES:
                    await self.send(too_large)
                    continue
                return line
            if len(self.buffer) > MAX_MESSAGE_BYTES:
                # Drop what came so far, and the rest up to its newline as it arrives.
                self.buffer.clear()
                self.scanned = 0
                self._account()
                self.discarding = True
                await self.send(too_large)
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                # The client half-closed: a last message without its newline still counts.
                last = bytes(self.buffer) if not self.discarding else b""
                self.buffer.clear()
                self.scanned = 0
                self._account()
                return last or None
            if self.discarding:
                newline = data.find(b"\n")
                if newline < 0:
                    continue
                data = data[newline + 1 :]
                self.discarding = False
            self.buffer += data
            self._account()

    async def serve(self) -> None:
        while (line := await self.next_line()) is not None:
            if not line.strip():
                continue
            self.answering = len(line)
            self._account()
            try:
                await self.answer(line)
            finally:
                self.answering = 0
                self._account()

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
                        self._account()
                    # A half-closed client (shutdown(SHUT_WR), `nc -N`) still reads the
                    # stream; one that closed altogether leaves the socket hung up.
                    # No event says a socket hung up while we do not read it: poll.
                    while not hung_up(self.stream.socket):  # noqa: ASYNC110
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
            except TooDeep as error:
                raise RequestError(ErrorCode.BAD_REQUEST, f"the message is {error}") from None
            except ValueError as error:  # UnicodeDecodeError included
                raise RequestError(ErrorCode.BAD_REQUEST, f"not valid JSON: {error}") from None
            request_id = request_id_of(message)
            request_id, request = parse_request(message)

            async def emit(*items: dict[str, Any]) -> None:
                # Several at once go out as one write: a page of sessions is 200 of them.
                await self.send_bytes(b"".join(encode_message({"id": request_id, **item}) for item in items))

            if request.command in STREAMING_COMMANDS:
                result = await self.stream_while_connected(self.commands.handle(request, emit))
            else:
                result = await self.commands.handle(request, emit)
            reply = ok_reply(request_id, result)
        except RequestError as error:
            reply = error_reply(request_id, error.code, error.message)
        except apsw.Error as error:
            log.error("storage_error", error=str(error))
            # Named: on a full disk, the operator must know which one to free.
            reply = error_reply(
                request_id, ErrorCode.STORAGE_ERROR, f"the database {self.commands.config.database} refused: {error}"
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError, ClientStalled):
            raise
        except Exception as error:
            # A bug must not take the daemon down: say what failed, keep serving.
            log.exception("request_failed", request=line[:200].decode(errors="replace"))
            reply = error_reply(request_id, ErrorCode.INTERNAL_ERROR, f"{type(error).__name__}: {error}")
        await self.send_bytes(encode_reply(reply))


async def serve(
    sock: trio.socket.SocketType,
    commands: Commands,
    policy: PeerPolicy,
    task_status=trio.TASK_STATUS_IGNORED,
    *,
    request_budget: int = REQUEST_BUDGET_BYTES,
    stall_timeout: float = SEND_STALL_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> None:
    listener = trio.SocketListener(sock)
    budget = RequestBudget(request_budget)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            connection = Connection(stream, commands, budget, stall_timeout)
            pid = uid = None
            try:
                with connection.scope:
                    pid, uid, gid = peer_credentials(stream.socket)
                    if not policy.allows(uid, gid):
                        log.warning("peer_refused", uid=uid, gid=gid)
                        await connection.send(
                            error_reply(None, ErrorCode.PERMISSION_DENIED, f"uid {uid} may not use this daemon")
                        )
                        return
                    if commands.connections >= max_connections:
                        # Each costs a file descriptor, which the spools need too.
                        log.warning(
                            "client_refused", pid=pid, uid=uid, reason="too many connections", open=commands.connections
                        )
                        await connection.send(
                            error_reply(
                                None,
                                ErrorCode.TOO_MANY_CLIENTS,
                                f"the daemon serves at most {max_connections} connections at once",
                            )
                        )
                        return
                    commands.connections += 1
                    try:
                        await connection.serve()
                    finally:
                        commands.connections -= 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away: nothing to answer
            except ClientStalled as error:
                log.warning("client_disconnected", pid=pid, uid=uid, reason=f"stalled: {error}")
            except Exception:
                # Whatever a client sends, it ends its own connection at most.
                log.exception("connection_failed", pid=pid, uid=uid)
            finally:
                budget.forget(connection)
            if connection.refused is not None:
                code, reason = connection.refused
                log.warning("client_disconnected", pid=pid, uid=uid, reason=reason)
                if not connection.mid_message:
                    with trio.move_on_after(1):
                        try:
                            await stream.send_all(encode_message(error_reply(None, code, reason)))
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass

    async with trio.open_nursery() as handlers:
        # Cancelling this scope stops accepting; open connections go on until the
        # daemon's nursery ends them.
        accepting = trio.CancelScope()
        task_status.started(accepting)
        with accepting:
            await trio.serve_listeners(handle, [listener], handler_nursery=handlers)
        await listener.aclose()
