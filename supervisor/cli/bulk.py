"""stop, kill, pause, resume, cancel and delete, on one session or many: several ids, or
the sessions a filter selects (-l KEY=VALUE, -s STATUS, --all), as `docker stop $(docker
ps -q)` and pueue's group commands do in one go. Each session gets its own request,
several at a time; each result gets a line, and one refusal does not stop the others."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from supervisor.cli.commands import confirmed, parse_kv
from supervisor.cli.connection import connect
from supervisor.cli.output import print_json, short_id
from supervisor.client import Client, RemoteError, result_of
from supervisor.errors import CliError, CliExit
from supervisor.model import ENDED_STATUSES, LIVE_STATUSES, Status

# The sessions --all means for each command, unless -s names others.
ALL_MEANS: dict[str, tuple[str, ...]] = {
    "stop": LIVE_STATUSES,
    "kill": LIVE_STATUSES,
    "pause": (Status.RUNNING, Status.WAITING_CHECKPOINT),
    "resume": (Status.PAUSED,),
    "cancel": (Status.QUEUED,),
    "delete": ENDED_STATUSES,
}
# Asked about on a terminal when they select with --all (as prune --all does).
DESTRUCTIVE = frozenset({"stop", "kill", "cancel", "delete"})
# Requests in flight at once: a stop waits up to stop_timeout for its session.
PARALLEL = 16


def add_selection(parser: argparse.ArgumentParser, command: str, status_option: tuple[str, ...]) -> None:
    """The ways to name the sessions: ids, or a filter."""
    parser.add_argument("ids", nargs="*", metavar="ID", help="session ids or unique prefixes")
    parser.add_argument(
        "-l", "--label", action="append", default=[], metavar="KEY=VALUE", help="the sessions with this label"
    )
    parser.add_argument(
        *status_option,
        dest="status",
        action="append",
        default=[],
        metavar="STATUS",
        help=f"the sessions in this status (repeatable; default with a filter: {', '.join(ALL_MEANS[command])})",
    )
    parser.add_argument(
        "--all", action="store_true", help=f"every session it applies to ({', '.join(ALL_MEANS[command])})"
    )
    if command in DESTRUCTIVE:
        parser.add_argument("-y", "--yes", action="store_true", help="do not ask before --all")


def selected_ids(client: Client, command: str, args: argparse.Namespace) -> list[str]:
    filtered = bool(args.label or args.status or args.all)
    if args.ids and filtered:
        raise CliError("give session ids or a filter (-l, -s, --all), not both", CliExit.USAGE)
    if args.ids:
        return list(args.ids)
    if not filtered:
        raise CliError(f"{command}: which sessions? give ids, or -l KEY=VALUE, -s STATUS, --all", CliExit.USAGE)
    if args.all and command in DESTRUCTIVE and not args.yes and not args.label and not args.status:
        if not sys.stdin.isatty():
            raise CliError(f"{command} --all: add -y to confirm (no terminal to ask on)", CliExit.USAGE)
        if not confirmed(f"{command.capitalize()} every session it applies to ({', '.join(ALL_MEANS[command])})?"):
            return []
    statuses = args.status or list(ALL_MEANS[command])
    labels = parse_kv(args.label, "--label") or None
    ids = []
    for message in client.messages("ps", status=statuses, labels=labels, all=True, stream=True):
        if "session" in message:
            ids.append(message["session"]["id"])
        else:
            result_of(message)  # a refusal (a status it does not know) is raised here
    return ids


Describe = Callable[[dict[str, Any], argparse.Namespace], str]


def on_sessions(command: str, describe: Describe, **extra_args: str):
    """A subcommand that sends `command` for each selected session and prints a line
    for each (describe(result, args)), or its refusal."""

    def run(client: Client, args: argparse.Namespace) -> int:
        extras = {name: getattr(args, attr) for name, attr in extra_args.items()}
        ids = selected_ids(client, command, args)
        if not ids:
            print(f"slotctl: no session to {command}", file=sys.stderr)
            return CliExit.OK
        if len(ids) == 1:
            return report(command, ids[0], lambda: client.request(command, session=ids[0], **extras), describe, args)

        def one(session_id: str) -> Any:
            with connect(args) as own:  # a connection each: they run at once
                return own.request(command, session=session_id, **extras)

        import concurrent.futures  # only here: slotctl starts faster without it

        statuses = []
        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            futures = {session_id: pool.submit(one, session_id) for session_id in ids}
            for session_id, future in futures.items():
                statuses.append(report(command, session_id, future.result, describe, args))
        return max(statuses)

    return run


def report(
    command: str,
    session_id: str,
    result: Callable[[], Any],
    describe: Describe,
    args: argparse.Namespace,
) -> int:
    try:
        outcome = result()
    except RemoteError as error:
        print(f"slotctl: {command} {short_id(session_id)}: {error.message} [{error.code}]", file=sys.stderr)
        return CliExit.REFUSED
    print_json(outcome) if args.json else print(describe(outcome, args))
    return CliExit.OK


def stopped_line(session: dict[str, Any], _args: argparse.Namespace) -> str:
    reason = f" ({session['reason']})" if session.get("reason") else ""
    return f"{session['id']} {session['status']}{reason}"


def status_line(session: dict[str, Any], _args: argparse.Namespace) -> str:
    return f"{session['id']} {session['status']}"


def signalled_line(session: dict[str, Any], args: argparse.Namespace) -> str:
    name = str(args.signal).upper()
    name = name if name.isdigit() or name.startswith("SIG") else f"SIG{name}"
    return f"{session['id']} sent {name} ({session['status']})"


def deleted_line(result: dict[str, Any], _args: argparse.Namespace) -> str:
    return f"deleted {result['deleted']}"
