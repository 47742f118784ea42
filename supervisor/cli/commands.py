"""slotctl's subcommands: each builds its request from the command line, sends it, and
prints the answer; cmd_NAME for the protocol command NAME."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from supervisor.cli.connection import Reconnecting, follow_rows, print_rows
from supervisor.cli.output import (
    RowPrinter,
    human_value,
    print_json,
    print_json_array,
    print_session,
    print_sessions,
    short_id,
)
from supervisor.cli.style import printable
from supervisor.cli.times import Bound
from supervisor.client import Client, result_of
from supervisor.errors import CliError, CliExit
from supervisor.model import MAX_TERMINAL_SIDE, Status, Stream, TerminalSize

# The streams of what a command writes: its pipes', or its terminal's.
OUTPUT_STREAMS: set[str] = {Stream.STDOUT, Stream.STDERR, Stream.TTY}


def parse_kv(pairs: list[str], what: str) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"{what} must be KEY=VALUE, got {pair!r}", CliExit.USAGE)
        result[key] = value
    return result


def labels_from(args: argparse.Namespace) -> dict[str, Any]:
    labels: dict[str, Any] = {}
    if args.labels_json:
        try:
            labels = json.loads(args.labels_json)
        except json.JSONDecodeError as error:
            raise CliError(f"--labels-json is not valid JSON: {error}", CliExit.USAGE) from None
        if not isinstance(labels, dict):
            raise CliError("--labels-json must be a JSON object", CliExit.USAGE)
    labels.update(parse_kv(args.label, "--label"))
    return labels


def start_args(args: argparse.Namespace) -> dict[str, Any]:
    if not args.argv:
        raise CliError("no command given: slotctl start [options] -- COMMAND [ARG...]", CliExit.USAGE)
    argv = args.argv[1:] if args.argv[0] == "--" else args.argv
    if not argv:
        raise CliError("no command given after --", CliExit.USAGE)
    request = {
        "argv": argv,
        "cwd": os.path.abspath(args.cwd) if args.cwd else os.getcwd(),
        "env": session_env(args),
        "inherit_env": False,
        "labels": labels_from(args),
        "priority": args.priority,
        "nice": args.nice,
        "queue": not args.no_queue,
        "timeout": args.timeout,
        "memory_limit": args.memory,
    }
    if args.size is not None and not args.tty:
        raise CliError("--size is a terminal's size: give it with --tty", CliExit.USAGE)
    if args.tty:
        size = args.size or own_terminal_size()
        request |= {"tty": True, "tty_cols": size and size.cols, "tty_rows": size and size.rows}
    return request


# What describes slotctl's own terminal, which a tty session's is not: the daemon sets
# TERM for it, and its size comes with the request.
OWN_TERMINAL_VARIABLES = ("TERM", "COLUMNS", "LINES")


def session_env(args: argparse.Namespace) -> dict[str, str]:
    """The session's whole environment, as a shell would pass it: slotctl's own (empty
    with --env-clear), without the -u names, with the -e pairs."""
    env = {} if args.env_clear else dict(os.environ)
    for name in (*args.unset, *(OWN_TERMINAL_VARIABLES if args.tty else ())):
        env.pop(name, None)
    env.update(parse_kv(args.env, "--env"))
    return env


def own_terminal_size() -> TerminalSize | None:
    """The size of the terminal slotctl runs in (its stdout's, else its stdin's), if any:
    the daemon's default size is for clients without one."""
    for stream in (sys.stdout, sys.stdin):
        try:
            size = os.get_terminal_size(stream.fileno())
        except (OSError, ValueError):
            continue
        # A terminal that reports 0x0 (a serial line) has no size to pass on.
        if size.columns and size.lines:
            return TerminalSize(min(size.columns, MAX_TERMINAL_SIDE), min(size.lines, MAX_TERMINAL_SIDE))
    return None


def print_new_session(session: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print_json(session)
    else:
        print(session["id"] if args.quiet else f"{session['id']} {session['status']}")


def cmd_start(client: Client, args: argparse.Namespace) -> int:
    # Given a slot, it answers once the command runs or could not start: a command
    # that does not exist is an error here, not a "running" that was never true.
    session = client.request("start", **start_args(args), wait_started=True)
    print_new_session(session, args)
    if session["status"] == Status.FAILED:
        what = session["cwd"] if "working directory" in (session["reason"] or "") else session["argv"][0]
        print(
            f"slotctl: session {short_id(session['id'])} could not start: {session['reason']}: {printable(what)}",
            file=sys.stderr,
        )
        return CliExit.NOT_STARTED
    return CliExit.OK


def cmd_restart(client: Client, args: argparse.Namespace) -> int:
    print_new_session(client.request("restart", session=args.id), args)
    return CliExit.OK


def exit_status_of(session: dict[str, Any]) -> int:
    if session["signal"] is not None:
        return 128 + session["signal"]
    if session["exit_code"] is not None:
        return session["exit_code"]
    if session["status"] == Status.COMPLETED:
        return CliExit.OK
    return CliExit.NOT_STARTED if session.get("started_at") is None or session["pid"] is None else CliExit.REFUSED


def cmd_ps(client: Client, args: argparse.Namespace) -> int:
    # Streamed: the daemon sends any number of sessions a page at a time, never one
    # reply of them all.
    final: dict[str, Any] = {}

    def sessions() -> Iterator[dict[str, Any]]:
        for message in client.messages(
            "ps",
            status=args.status or None,
            labels=parse_kv(args.label, "--label") or None,
            limit=args.limit,
            all=args.all,
            stream=True,
        ):
            if "session" in message:
                yield message["session"]
            else:
                final.update(result_of(message))

    if args.json:
        print_json_array(sessions())
    else:
        print_sessions(sessions(), args.colour)
    if final["hidden"]:
        print(f"{final['hidden']} older ended sessions not shown (ps -a)", file=sys.stderr)
    return CliExit.OK


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    session = client.request("show", session=args.id)
    print_json(session) if args.json else print_session(session, env_values=args.env_values, colour=args.colour)
    return CliExit.OK


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    mode = "json" if args.json else "raw" if args.raw else "human"
    if args.stream:
        streams = {args.stream}
    elif args.raw:
        streams = OUTPUT_STREAMS  # raw means the bytes the command wrote
    else:
        streams = None
    if args.timestamps and args.raw:
        raise CliError("--raw prints the bytes as written: -t/--timestamps cannot be added to them", CliExit.USAGE)
    if args.until is not None and args.follow:
        raise CliError("--until ends the output where -f/--follow would wait for more: give one of them", CliExit.USAGE)
    printer = RowPrinter(mode, streams, timestamps=args.timestamps, merge=args.merge, markers=not args.no_markers)
    since = args.since or Bound(None, None)
    until = args.until or Bound(None, None)
    request = {
        "session": args.id,
        "tail": args.n,
        "since_seq": since.seq,
        "since_time": since.time,
        "until_seq": until.seq,
        "until_time": until.time,
        "stream": args.stream,
    }
    if not args.follow:
        print_rows(client, printer, "logs", **request)
        return CliExit.OK
    daemon = Reconnecting(args, client)
    try:
        session_id = daemon.run(lambda c: c.request("show", session=args.id)["id"])

        def backlog(c: Client) -> int:
            if printer.last_seq:
                # Cut off after some rows: the follow below carries on after the last one.
                return printer.last_seq
            return print_rows(c, printer, "logs", **request | {"session": session_id})["last_seq"]

        since = daemon.run(backlog)
        follow_rows(daemon, session_id, since, printer, args.stream)
    finally:
        daemon.close()
    return CliExit.OK


def cmd_send(client: Client, args: argparse.Namespace) -> int:
    data = args.data if args.data is not None else ""
    if args.stdin:
        data_b64 = __import__("base64").b64encode(sys.stdin.buffer.read()).decode()
    else:
        data_b64 = None
        if not args.no_newline and args.data is not None:
            data += "\n"
    result = client.request("send", session=args.id, data=data, data_b64=data_b64, eof=args.eof)
    print_json(result) if args.json else None
    return CliExit.OK


def confirmed(question: str) -> bool:
    """Ask on the terminal; only y or yes is a yes."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_prune(client: Client, args: argparse.Namespace) -> int:
    filtered = args.older_than is not None or bool(args.status)
    if args.all and filtered:
        raise CliError("--all means every ended session: give it without --older-than or --status", CliExit.USAGE)
    if not args.all and not filtered:
        raise CliError("prune needs --older-than AGE, --status STATUS, or --all for every ended session", CliExit.USAGE)
    if args.all and not args.yes:
        # As docker's prune commands: ask on a terminal, and without one refuse rather
        # than delete everything unasked.
        if not sys.stdin.isatty():
            raise CliError(
                "prune --all deletes every ended session: add -y to confirm (no terminal to ask on)", CliExit.USAGE
            )
        if not confirmed("Delete every ended session and its transcript?"):
            print("slotctl: nothing pruned", file=sys.stderr)
            return CliExit.OK
    result = client.request("prune", older_than=args.older_than, status=args.status or None)
    print_json(result) if args.json else print(f"pruned {len(result['deleted'])} sessions")
    return CliExit.OK


def daemon_command(command: str):
    def run(client: Client, args: argparse.Namespace) -> int:
        extras = {"mode": args.mode} if command == "shutdown" else {"count": args.count} if command == "slots" else {}
        result = client.request(command, **extras)
        if args.json:
            print_json(result)
        elif command == "info":
            for key, value in result.items():
                print(f"{key + ':':18} {human_value(key, value)}")
        else:
            print(daemon_change_text(command, result))
        return CliExit.OK

    return run


def daemon_change_text(command: str, result: dict[str, Any]) -> str:
    """One line saying what a change to the daemon did."""
    if command == "shutdown":
        return f"shutting down ({result['mode']})"
    busy = f"{result['busy']} of {result['slots']} slots busy, {result['queued']} queued"
    if command == "drain":
        return f"draining: queued sessions wait ({busy}); `slotctl undrain` starts them again"
    if command == "undrain":
        return f"not draining: queued sessions start as slots free ({busy})"
    configured = result["configured_slots"]
    note = "" if configured == result["slots"] else f"; the config says {configured}, this stays across restarts"
    return f"slots: {result['slots']} ({busy}{note})"
