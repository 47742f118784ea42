"""The MCP server's tools and resources, on the SDK's MCPServer: each tool is one or two
protocol requests (argument names as in docs/protocol.md), returns structured content
of a model in views.py with a short text beside it, and turns the daemon's refusals
into tool errors carrying the protocol's error code and message."""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, ParamSpec

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from supervisor import __version__
from supervisor.asyncclient import Daemon
from supervisor.cli.commands import OWN_TERMINAL_VARIABLES
from supervisor.client import DaemonUnavailable, RemoteError
from supervisor.mcpserver.excerpts import read_from, read_tail
from supervisor.mcpserver.views import (
    Output,
    Sent,
    SessionInfo,
    SessionList,
    SessionView,
    ToolFailure,
    TranscriptStats,
    Waited,
    describe,
    describe_info,
    describe_list,
    describe_wait,
)
from supervisor.model import ENDED_STATUSES, Status
from supervisor.protocol import PS_REPLY_MAX, ErrorCode

# Not a protocol code: the daemon could not be asked at all.
UNAVAILABLE = "unavailable"
DEFAULT_MAX_BYTES = 16 * 1024
MAX_MAX_BYTES = 16 * 1024 * 1024
# A transcript resource is read whole by a client, often into a context: its start,
# cut as read_output cuts, pointing at read_output for the rest.
RESOURCE_MAX_BYTES = 1024 * 1024
DEFAULT_LIST_LIMIT = 100
# The most last lines read_output and session_info show: a tail is read whole from the
# daemon before max_bytes cuts it, so it must stay small.
MAX_TAIL_LINES = 10000

INSTRUCTIONS = """\
slotd runs command-line sessions (builds, test runs, agents) in a few slots on this
machine, queues the rest, and keeps every byte they print. Start a session with
start_session, wait for it with wait_session, read what it printed with read_output
(cut at max_bytes; next_seq and skip_bytes read on), and answer a session that waits
at a checkpoint (status waiting_checkpoint, e.g. a `Continue? [y/N]` prompt) with
send_input. A session is named by its id or any unique prefix of it."""

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
CHANGES = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
ENDS_SESSIONS = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)

SessionArg = Annotated[str, Field(description="The session id or a unique prefix of it.")]
StreamArg = Annotated[
    Literal["stdout", "stderr", "stdin", "system", "tty"] | None,
    Field(description="Only this stream (default: all; system rows read as `[slotd] ...` lines)."),
]
MaxBytes = Annotated[
    int, Field(ge=256, le=MAX_MAX_BYTES, description="At most this many bytes of output; the rest is cut off.")
]

P = ParamSpec("P")


def result(model: BaseModel, text: str) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=model.model_dump(mode="json")
    )


def failure(code: str, message: str) -> CallToolResult:
    """A tool error: the model reads `code: message`, a program the structured code."""
    return CallToolResult(
        content=[TextContent(type="text", text=f"{code}: {message}")],
        structured_content=ToolFailure(code=code, message=message).model_dump(),
        is_error=True,
    )


def answers(tool: Callable[P, Awaitable[CallToolResult]]) -> Callable[P, Awaitable[CallToolResult]]:
    """The tool, with the daemon's refusals and absence as tool errors, never exceptions
    (the SDK would give those a generic text without the error code)."""

    @functools.wraps(tool)
    async def answer(*args: P.args, **kwargs: P.kwargs) -> CallToolResult:
        try:
            return await tool(*args, **kwargs)
        except RemoteError as error:
            return failure(error.code, error.message)
        except DaemonUnavailable as error:
            return failure(UNAVAILABLE, str(error))
        except ConnectionError as error:
            return failure(UNAVAILABLE, f"lost the connection to slotd: {error}")

    return answer


def session_env(env: dict[str, str] | None, tty: bool) -> dict[str, str]:
    """A session's whole environment, as slotctl passes its own: this server's, with
    env on top (a tty session's terminal variables are the daemon's to set)."""
    own = {name: value for name, value in os.environ.items() if not (tty and name in OWN_TERMINAL_VARIABLES)}
    return own | (env or {})


def build_server(daemon: Daemon, default_cwd: str) -> MCPServer:
    """The MCP server for the daemon behind daemon; sessions start in default_cwd unless told."""
    server: MCPServer = MCPServer("slotd", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")

    async def listing(status: str | list[str] | None, labels: dict[str, Any] | None, limit: int | None) -> SessionList:
        sessions: list[SessionView] = []
        final = await daemon.messages(
            "ps",
            lambda message: sessions.append(SessionView.of(message["session"])),
            status=status,
            labels=labels,
            limit=limit,
            stream=True,
        )
        return SessionList(sessions=sessions, hidden=final["hidden"])

    @server.tool(annotations=READ_ONLY)
    @answers
    async def list_sessions(
        status: Annotated[
            str | list[str] | None,
            Field(
                description="Only sessions with this status or these statuses: queued, running, paused, "
                "waiting_checkpoint, completed, failed, killed, lost, cancelled. With a filter every match is "
                "listed, else live and queued ones and the 20 latest ended."
            ),
        ] = None,
        labels: Annotated[
            dict[str, Any] | None, Field(description="Only sessions with every one of these labels.")
        ] = None,
        limit: Annotated[
            int, Field(ge=0, le=PS_REPLY_MAX, description="At most this many sessions.")
        ] = DEFAULT_LIST_LIMIT,
    ) -> Annotated[CallToolResult, SessionList]:
        """List sessions: those waiting at a checkpoint first, then running and paused, queued, and the
        latest ended."""
        sessions = await listing(status, labels, limit)
        return result(sessions, describe_list(sessions))

    @server.tool(annotations=CHANGES)
    @answers
    async def start_session(
        argv: Annotated[list[str], Field(min_length=1, description="The command and its arguments (no shell).")],
        cwd: Annotated[str | None, Field(description="Its working directory (default: the MCP server's own).")] = None,
        env: Annotated[
            dict[str, str] | None,
            Field(description="Variables to set on top of the MCP server's own environment, which it runs in."),
        ] = None,
        labels: Annotated[dict[str, Any] | None, Field(description="Labels to find it by.")] = None,
        priority: Annotated[int, Field(description="Higher starts first when it has to queue.")] = 0,
        tty: Annotated[bool, Field(description="Run it on a pseudo-terminal (stdout and stderr become one).")] = False,
    ) -> Annotated[CallToolResult, SessionView]:
        """Start a session running argv; it is queued if every slot is busy. Returns the session."""
        session = SessionView.of(
            await daemon.request(
                "start",
                argv=argv,
                cwd=os.path.join(default_cwd, cwd) if cwd else default_cwd,
                env=session_env(env, tty),
                inherit_env=False,
                labels=labels,
                priority=priority,
                tty=tty or None,
                wait_started=True,
            )
        )
        text = describe(session)
        if session.status == Status.FAILED:
            text = f"could not start: {text}"
        return result(session, text)

    @server.tool(annotations=READ_ONLY)
    @answers
    async def read_output(
        session: SessionArg,
        tail_lines: Annotated[
            int | None,
            Field(ge=0, le=MAX_TAIL_LINES, description="Only the last this many lines (not with since_seq)."),
        ] = None,
        since_seq: Annotated[
            int | None,
            Field(
                ge=0, description="Only output after this row (a next_seq returned before); default: from the start."
            ),
        ] = None,
        skip_bytes: Annotated[
            int, Field(ge=0, description="Bytes of the first row after since_seq already read (next_skip_bytes).")
        ] = 0,
        stream: StreamArg = None,
        max_bytes: MaxBytes = DEFAULT_MAX_BYTES,
    ) -> Annotated[CallToolResult, Output]:
        """Read a session's output as text, at most max_bytes of it: what is cut off is marked, saying how
        much was left out, and next_seq (with next_skip_bytes) reads on from there."""
        if tail_lines is not None:
            if since_seq is not None or skip_bytes:
                return failure(ErrorCode.INVALID_ARGUMENT, "tail_lines cannot be combined with since_seq or skip_bytes")
            excerpt = await read_tail(daemon, session, tail_lines, stream, max_bytes)
        else:
            excerpt = await read_from(daemon, session, since_seq or 0, skip_bytes, stream, max_bytes)
        output = Output(
            status=excerpt.status,
            text=excerpt.text,
            next_seq=excerpt.next_seq,
            next_skip_bytes=excerpt.next_skip_bytes,
            left_out_bytes=excerpt.left_out_bytes,
            left_out_at_least=excerpt.left_out_at_least,
        )
        footer = "" if excerpt.cut else f"[slotd: session {excerpt.status}; next_seq={excerpt.next_seq}]"
        return result(output, (excerpt.text or "(no output)\n") + footer)

    @server.tool(annotations=CHANGES)
    @answers
    async def send_input(
        session: SessionArg,
        text: Annotated[str, Field(description="What to write to the session's stdin (its terminal, with tty).")],
        newline: Annotated[bool, Field(description="Add a newline, as Enter would.")] = True,
    ) -> Annotated[CallToolResult, Sent]:
        """Write text to a live session's stdin, as an answer to a prompt; a session waiting at a checkpoint
        goes back to running."""
        sent = Sent(sent=(await daemon.request("send", session=session, data=text + "\n" * newline))["sent"])
        return result(sent, f"sent {sent.sent} bytes to {session}")

    @server.tool(annotations=READ_ONLY)
    @answers
    async def wait_session(
        session: SessionArg,
        until: Annotated[
            Literal["ended", "checkpoint"],
            Field(description="ended: until it has ended; checkpoint: until it waits at a checkpoint (or ends)."),
        ] = "ended",
        timeout_s: Annotated[float, Field(ge=0, le=86400, description="Return after this many seconds anyway.")] = 60,
    ) -> Annotated[CallToolResult, Waited]:
        """Wait until a session has ended or waits at a checkpoint, or the timeout passes; returns the
        session and which of these holds."""
        answer = await daemon.wait(session, "end" if until == "ended" else "checkpoint", timeout_s)
        view = SessionView.of(answer["sessions"][0])
        reached: Literal["ended", "checkpoint"] | None = None
        if view.status in ENDED_STATUSES:
            reached = "ended"
        elif view.status == Status.WAITING_CHECKPOINT:
            reached = "checkpoint"
        waited = Waited(session=view, reached=reached, timed_out=answer["timed_out"])
        return result(waited, describe_wait(waited, timeout_s))

    @server.tool(annotations=ENDS_SESSIONS)
    @answers
    async def stop_session(
        session: SessionArg,
        force: Annotated[
            bool, Field(description="SIGKILL at once, instead of SIGTERM and SIGKILL after the stop timeout.")
        ] = False,
    ) -> Annotated[CallToolResult, SessionView]:
        """Stop a session: SIGTERM to its process group, SIGKILL if it has not ended after the daemon's stop
        timeout (a queued session is cancelled). Returns the session."""
        if force:
            view = SessionView.of(await daemon.request("kill", session=session, signal="KILL"))
            return result(view, f"SIGKILL sent: {describe(view)}")
        view = SessionView.of(await daemon.request("stop", session=session))
        return result(view, describe(view))

    @server.tool(annotations=ENDS_SESSIONS)
    @answers
    async def cancel_session(session: SessionArg) -> Annotated[CallToolResult, SessionView]:
        """Take a queued session off the queue; it never runs."""
        view = SessionView.of(await daemon.request("cancel", session=session))
        return result(view, describe(view))

    @server.tool(annotations=READ_ONLY)
    @answers
    async def session_info(
        session: SessionArg,
        tail_lines: Annotated[int, Field(ge=0, le=MAX_TAIL_LINES, description="How many last lines to show.")] = 20,
        max_bytes: Annotated[
            int, Field(ge=256, le=MAX_MAX_BYTES, description="At most this many bytes of those lines.")
        ] = 4096,
    ) -> Annotated[CallToolResult, SessionInfo]:
        """One session: its status, command, how it ended, its transcript's size and its last lines."""
        shown = await daemon.request("show", session=session)
        excerpt = await read_tail(daemon, shown["id"], tail_lines, None, max_bytes)
        info = SessionInfo(
            session=SessionView.of(shown),
            transcript=TranscriptStats.model_validate(shown["transcript"]),
            last_lines=excerpt.text,
            next_seq=excerpt.next_seq,
        )
        return result(info, describe_info(info))

    @server.resource(
        "slotd://sessions",
        name="sessions",
        description="The session list, as list_sessions gives it.",
        mime_type="application/json",
    )
    async def sessions() -> str:
        try:
            return (await listing(None, None, None)).model_dump_json()
        except (RemoteError, DaemonUnavailable, ConnectionError) as error:
            raise ResourceError(str(error)) from None

    @server.resource(
        "slotd://sessions/{id}/transcript",
        name="transcript",
        description=f"A session's output as text: its first {RESOURCE_MAX_BYTES // 1024} KiB, then read_output.",
        mime_type="text/plain",
    )
    async def transcript(id: str) -> str:
        try:
            return (await read_from(daemon, id, 0, 0, None, RESOURCE_MAX_BYTES)).text
        except RemoteError as error:
            if error.code == ErrorCode.NOT_FOUND:
                raise ResourceNotFoundError(error.message) from None
            raise ResourceError(str(error)) from None
        except (DaemonUnavailable, ConnectionError) as error:
            raise ResourceError(str(error)) from None

    return server
