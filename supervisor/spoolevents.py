"""What a session's spool says, applied to its row as the runner tails it: the shim's own
records (the command started, exited, or could not start), and whether the latest
output shows the session waiting at a checkpoint for a person.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import re2
import structlog

from supervisor import spool
from supervisor.ingest import Ingestor
from supervisor.live import STOPPED_ON_REQUEST, LiveSession
from supervisor.model import iso_from_unix
from supervisor.processes import ProcessRef

log = structlog.get_logger()

# How much of the latest output the checkpoint pattern looks at.
CHECKPOINT_WINDOW = 4096


def shim_columns(shim: ProcessRef | None, pid: int) -> dict[str, Any]:
    """What the database records of a shim: PID, start ticks, and create time for people."""
    return {
        "shim_pid": pid,
        "shim_start_ticks": shim.start_ticks if shim else None,
        "shim_create_time": shim.create_time() if shim else None,
    }


def command_columns(command: ProcessRef | None, pid: int) -> dict[str, Any]:
    return {
        "pid": pid,
        "pid_start_ticks": command.start_ticks if command else None,
        "pid_create_time": command.create_time() if command else None,
    }


def describe_exit(exit_code: int | None, signum: int | None) -> str:
    if signum is not None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"killed by {name}"
    return f"exit code {exit_code}"


def apply_event(ingestor: Ingestor, live: LiveSession, record: spool.Record, end: spool.Position) -> None:
    """Record what one of the shim's own records says (START, EXIT or SPAWN_FAILED)."""
    payload = json.loads(record.data)
    ingestor.set_position(live.id, end, live.spool_dir)
    bound = log.bind(session_id=live.id, slot=live.slot)
    if record.kind == spool.START:
        live.command = ProcessRef.recorded(payload["pid"], payload.get("start_ticks"))
        columns = command_columns(live.command, payload["pid"])
        if live.shim is None and payload.get("shim_start_ticks") is not None:
            # The daemon died between spawning the shim and recording it.
            live.shim = ProcessRef(payload["shim_pid"], payload["shim_start_ticks"])
            columns |= shim_columns(live.shim, live.shim.pid)
        live.started.set()
        ingestor.update(live.id, **columns)
        bound.info("command_started", pid=payload["pid"])
    elif record.kind == spool.EXIT:
        exit_code, signum = payload["exit_code"], payload["signal"]
        how = describe_exit(exit_code, signum)
        if live.stop_requested:
            status, reason = "killed", f"{live.stop_reason or STOPPED_ON_REQUEST}, {how}"
        elif exit_code == 0:
            status, reason = "completed", None
        else:
            status, reason = "failed", how
        live.decide_end(status)
        ingestor.append(live.id, "system", f"{how}\n".encode())
        ingestor.update(
            live.id,
            status=status,
            slot=None,
            exit_code=exit_code,
            signal=signum,
            reason=reason,
            ended_at=iso_from_unix(payload["ended_at"]),
        )
        live.started.set()
        bound.info("session_exited", status=status, exit_code=exit_code, signal=signum)
    elif record.kind == spool.SPAWN_FAILED:
        live.decide_end("failed")
        reason = payload["reason"]
        ingestor.append(live.id, "system", f"failed to start: {payload['detail']}\n".encode())
        ingestor.update(live.id, status="failed", slot=None, reason=reason, ended_at=iso_from_unix(payload["ended_at"]))
        live.started.set()
        bound.warning("session_spawn_failed", reason=reason, detail=payload["detail"])


def apply_output(ingestor: Ingestor, checkpoint_regex: re2._Regexp | None, live: LiveSession, data: bytes) -> None:
    """A session whose latest output matches the checkpoint pattern waits for a person."""
    if checkpoint_regex is None or live.final or live.status not in ("running", "waiting_checkpoint"):
        return
    waiting = checkpoint_regex.search(data[-CHECKPOINT_WINDOW:]) is not None
    status = "waiting_checkpoint" if waiting else "running"
    if status != live.status:
        live.status = status
        ingestor.update(live.id, status=status)
        log.info("session_checkpoint" if waiting else "session_resumed_output", session_id=live.id, slot=live.slot)
