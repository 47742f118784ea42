"""What the MCP tools return: pydantic models (the SDK publishes their JSON schemas as
the tools' output schemas and checks each result against them) and the short text
rendering beside each result.

A session is shown to an agent without its environment, whose values may be secrets
(the server passes its own environment on to the sessions it starts), and without the
bookkeeping fields (shim pids, start ticks) no agent needs."""

from __future__ import annotations

import shlex
from typing import Any, Literal

from pydantic import BaseModel, Field

from supervisor.model import ENDED_STATUSES


class SessionView(BaseModel):
    """A session as an agent sees it."""

    id: str = Field(description="The full session id; any unique prefix names it too.")
    status: str = Field(
        description="queued, running, paused, waiting_checkpoint (its output asks a question: "
        "answer with send_input), or ended: completed, failed, killed, lost, cancelled."
    )
    slot: int | None = Field(description="Its slot while live, else null.")
    argv: list[str]
    cwd: str
    labels: dict[str, Any]
    priority: int
    tty: bool = Field(description="Whether it runs on a pseudo-terminal.")
    pid: int | None
    exit_code: int | None = Field(description="Its exit status, if it exited on its own.")
    signal: int | None = Field(description="The signal that ended it, if one did.")
    reason: str | None = Field(description="Why it ended as it did (null while live and when completed).")
    queued_at: str
    started_at: str | None
    ended_at: str | None

    @classmethod
    def of(cls, session: dict[str, Any]) -> SessionView:
        """The view of a session object as the daemon sends it."""
        return cls.model_validate({name: session.get(name) for name in cls.model_fields})


class SessionList(BaseModel):
    sessions: list[SessionView]
    hidden: int = Field(
        description="Ended sessions matching the filters left out: without a status filter only the 20 "
        "latest ended ones are listed."
    )


class Output(BaseModel):
    status: str = Field(description="The session's status when read.")
    text: str = Field(description="The output, as UTF-8 (bytes that are not are replaced), with a marker if cut.")
    next_seq: int = Field(description="Pass as since_seq (with skip_bytes) to read what comes after this text.")
    next_skip_bytes: int = Field(description="Pass as skip_bytes with since_seq=next_seq.")
    left_out_bytes: int = Field(description="Bytes of output cut off by max_bytes (0: nothing was).")
    left_out_at_least: bool = Field(description="True if counting stopped early: more than left_out_bytes is left.")


class Sent(BaseModel):
    sent: int = Field(description="Bytes written to the session's stdin.")


class Waited(BaseModel):
    session: SessionView
    reached: Literal["ended", "checkpoint"] | None = Field(
        description="What holds now: ended, checkpoint (waiting_checkpoint), or null if the timeout passed first."
    )
    timed_out: bool


class TranscriptStats(BaseModel):
    rows: int
    bytes: int
    last_seq: int


class SessionInfo(BaseModel):
    session: SessionView
    transcript: TranscriptStats
    last_lines: str = Field(description="The transcript's last lines (cut to max_bytes with a marker).")
    next_seq: int = Field(description="Pass as since_seq to read_output for what comes after these lines.")


class ToolFailure(BaseModel):
    """The structured content of a tool error: the protocol's error code and message."""

    code: str
    message: str


def command_line(argv: list[str]) -> str:
    return shlex.join(argv)


def describe(session: SessionView) -> str:
    """One line: id, status (with how it ended), slot, command."""
    status = session.status
    if session.status in ENDED_STATUSES:
        how = session.reason or (f"exit {session.exit_code}" if session.exit_code is not None else None)
        if how:
            status += f" ({how})"
    elif session.slot is not None:
        status += f" in slot {session.slot}"
    return f"{session.id} {status}: {command_line(session.argv)}"


def describe_list(listing: SessionList) -> str:
    lines = [describe(session) for session in listing.sessions] or ["no sessions"]
    if listing.hidden:
        lines.append(f"({listing.hidden} older ended sessions not listed: filter by status to see them)")
    return "\n".join(lines)


def describe_wait(waited: Waited, timeout_s: float) -> str:
    if waited.timed_out:
        return f"timed out after {timeout_s:g}s; {describe(waited.session)}"
    return f"{waited.reached}: {describe(waited.session)}"


def describe_info(info: SessionInfo) -> str:
    stats = info.transcript
    return (
        f"{describe(info.session)}\ntranscript: {stats.rows} rows, {stats.bytes} bytes, last seq {stats.last_seq}\n"
        f"last lines:\n{info.last_lines}"
    )
