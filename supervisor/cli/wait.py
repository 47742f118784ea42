"""`slotctl wait`: block until sessions end (or reach a checkpoint), as `pueue wait` and
`docker wait` do, and exit as `slotctl run` would have for the session waited for."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from supervisor.cli.commands import exit_status_of
from supervisor.cli.connection import RECONNECT_SECONDS, Reconnecting
from supervisor.cli.output import outcome, print_json, short_id
from supervisor.client import Client, result_of
from supervisor.errors import CliExit
from supervisor.model import ENDED_STATUSES, Status


def wait_result(daemon: Reconnecting, args: argparse.Namespace) -> dict[str, Any]:
    """The daemon's `wait` result, asked again on a new connection after a loss (a
    daemon restart) with the full ids it resolved and the time left."""
    session_ids = list(args.ids)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout

    def attempt(client: Client) -> dict[str, Any]:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        for message in client.messages("wait", sessions=session_ids, any=args.any, until=args.until, timeout=timeout):
            if "waiting" in message:
                session_ids[:] = message["waiting"]
            else:
                return result_of(message)
        raise ConnectionError("no reply")

    return daemon.run(attempt)


def the_one_waited_for(sessions: list[dict[str, Any]], first: bool) -> dict[str, Any]:
    """The session whose end gives the exit status: the last to end (the first, with
    --any), by ended_at; of sessions that ended at once, the last named (the first)."""
    ended = [session for session in sessions if session["status"] in ENDED_STATUSES]
    order = sorted(ended, key=lambda session: session["ended_at"] or "")
    return order[0] if first else order[-1]


def cmd_wait(client: Client, args: argparse.Namespace) -> int:
    # A lost daemon is waited for no longer than the timeout asks.
    patience = RECONNECT_SECONDS if args.timeout is None else min(RECONNECT_SECONDS, args.timeout)
    daemon = Reconnecting(args, client, patience)
    try:
        result = wait_result(daemon, args)
    finally:
        daemon.close()
    sessions = result["sessions"]
    if args.json:
        print_json(result)
    else:
        for session in sessions:
            if session["id"] not in result["pending"]:
                print(f"{short_id(session['id'])} {session['status']} {outcome(session)}")
    if result["timed_out"]:
        pending = [session for session in sessions if session["id"] in result["pending"]]
        still = ", ".join(f"{session['id']} ({session['status']})" for session in pending)
        print(f"slotctl: timed out after {args.timeout:g}s; still waiting for: {still}", file=sys.stderr)
        return CliExit.TIMED_OUT
    if args.until == "checkpoint":
        ended = [session for session in sessions if session["status"] in ENDED_STATUSES]
        at_checkpoint = [session for session in sessions if session["status"] == Status.WAITING_CHECKPOINT]
        if at_checkpoint and (args.any or not ended):
            return CliExit.OK
        for session in ended:
            print(
                f"slotctl: session {short_id(session['id'])} ended ({session['status']}) without reaching a checkpoint",
                file=sys.stderr,
            )
        return CliExit.NO_CHECKPOINT
    return exit_status_of(the_one_waited_for(sessions, args.any))
