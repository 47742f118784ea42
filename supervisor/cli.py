"""slotctl: the command-line client. Human tables by default, --json for scripts.

Exit codes: 0 done; 1 the daemon refused the request (the message says why); 2 bad
usage; 3 the daemon is not running or cannot be reached. ``slotctl run`` exits with the
session's own exit code (128 + N when a signal ended it, 127 when it could not start).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from supervisor import __version__
from supervisor.client import Client, DaemonUnavailable, RemoteError, find_socket, result_of
from supervisor.errors import CliExit, ConfigError, SlotdError
from supervisor.model import STREAMS, Status, Stream, unix_from_iso
from supervisor.protocol import EXITED_WHILE_BLOCKED, PS_RECENT_ENDED, decode_data

T = TypeVar("T")

# How long `logs -f` keeps trying to reconnect to a restarting daemon.
RECONNECT_SECONDS = 120.0


class CliError(SlotdError):
    def __init__(self, message: str, status: int = CliExit.REFUSED) -> None:
        super().__init__(message)
        self.status = status


# -- output ---------------------------------------------------------------------------


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def short_id(session_id: str) -> str:
    return session_id[:8]


def age(iso: str | None) -> str:
    if not iso:
        return "-"
    return age_text(time.time() - unix_from_iso(iso))


def command_text(argv: list[str], width: int = 40) -> str:
    # Control characters (a newline in a `python -c` program) would break the table.
    text = " ".join(argv).encode("unicode_escape").decode("ascii")
    return text if len(text) <= width else text[: width - 1] + "…"


def human_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if key.endswith("_bytes") and isinstance(value, int):
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= size:
                return f"{value / size:.1f} {unit}"
        return f"{value} B"
    if key == "uptime":
        return age_text(value)
    if key == "live" and isinstance(value, list):
        return ", ".join(f"slot {item['slot']}: {short_id(item['session'])} {status_text(item)}" for item in value) or "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


def outcome(session: dict[str, Any]) -> str:
    if session["signal"] is not None:
        try:
            return signal.Signals(session["signal"]).name
        except ValueError:
            return f"sig{session['signal']}"
    if session["exit_code"] is not None:
        return str(session["exit_code"])
    return "-"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def session_row(s: dict[str, Any]) -> list[str]:
    """A session's line of the `ps` table, cell by cell."""
    when = s["ended_at"] or s["started_at"] or s["queued_at"]
    labels = ",".join(f"{k}={v}" for k, v in s["labels"].items())
    return [
        short_id(s["id"]),
        str(s["slot"] or "-"),
        status_text(s),
        str(s["priority"]),
        str(s["pid"] or "-"),
        outcome(s),
        age(when),
        command_text(s["argv"]),
        labels,
    ]


SESSION_HEADERS = ["ID", "SLOT", "STATUS", "PRI", "PID", "EXIT", "AGE", "COMMAND", "LABELS"]


def print_sessions(sessions: Iterable[dict[str, Any]]) -> None:
    # The cells only are kept (the table's widths need every row): a tenth of the sessions' size.
    print_table(SESSION_HEADERS, [session_row(s) for s in sessions])


def print_json_array(values: Iterable[Any]) -> None:
    """Print values as print_json prints their list, each as soon as it comes."""
    opened = False
    for value in values:
        item = textwrap.indent(json.dumps(value, indent=2, sort_keys=True), "  ")
        sys.stdout.write((",\n" if opened else "[\n") + item)
        opened = True
    print("\n]" if opened else "[]")


def status_text(session: dict[str, Any]) -> str:
    """The status, and whether its output (and, once its command exited, its end)
    waits for room on a full runtime disk."""
    note = session.get("output_blocked")
    if not note:
        return session["status"]
    return session["status"] + (" (exited, disk full)" if note.endswith(EXITED_WHILE_BLOCKED) else " (disk full)")


def print_session(session: dict[str, Any]) -> None:
    fields = [
        "id", "status", "slot", "priority", "argv", "cwd", "env", "labels", "pid", "shim_pid",
        "exit_code", "signal", "reason", "output_blocked", "queued_at", "started_at", "ended_at",
    ]
    for name in fields:
        value = session.get(name)
        if isinstance(value, (list, dict)):
            value = json.dumps(value)
        print(f"{name + ':':12} {'-' if value is None else value}")
    if "transcript" in session:
        t = session["transcript"]
        print(f"{'transcript:':12} {t['rows']} rows, {t['bytes']} bytes, last seq {t['last_seq']}")


class RowPrinter:
    """Writes transcript rows: raw bytes, JSON lines, or for people (system rows marked)."""

    def __init__(self, mode: str, streams: set[str] | None) -> None:
        self.mode = mode
        self.streams = streams
        self.out = sys.stdout.buffer
        self.err = sys.stderr.buffer
        self.last_seq = 0

    def write(self, row: dict[str, Any]) -> None:
        self.last_seq = max(self.last_seq, row["seq"])
        if self.mode == "json":
            self.out.write(json.dumps(row).encode() + b"\n")
            self.out.flush()
            return
        stream = row["stream"]
        if self.streams is not None and stream not in self.streams:
            return
        data = decode_data(row)
        if self.mode == "raw":
            self.out.write(data)
        elif self.mode == "split":  # slotctl run: the command's stderr to our stderr
            (self.err if stream == Stream.STDERR else self.out).write(data)
        elif stream == Stream.SYSTEM:
            self.out.write(b"[slotd] " + data)
        elif stream == Stream.STDIN:
            self.out.write(b"[stdin] " + data + (b"" if data.endswith(b"\n") else b"\n"))
        else:
            self.out.write(data)
        self.out.flush()
        self.err.flush()


# -- commands -------------------------------------------------------------------------


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
    return {
        "argv": argv,
        "cwd": os.path.abspath(args.cwd) if args.cwd else os.getcwd(),
        "env": parse_kv(args.env, "--env"),
        "labels": labels_from(args),
        "priority": args.priority,
        "queue": not args.no_queue,
    }


def cmd_start(client: Client, args: argparse.Namespace) -> int:
    session = client.request("start", **start_args(args))
    if args.json:
        print_json(session)
    else:
        print(session["id"] if args.quiet else f"{session['id']} {session['status']}")
    return CliExit.OK


class Reconnecting:
    """One connection to the daemon at a time, opened again after a loss (the daemon
    restarted, or let a slow reader go) for up to RECONNECT_SECONDS."""

    def __init__(self, args: argparse.Namespace, client: Client | None) -> None:
        self.args = args
        self.client = client

    def run(self, attempt: Callable[[Client], T]) -> T:
        """attempt(client) until it returns; after a loss it is called again on a new
        connection, so it must ask for what it still lacks (rows after the last printed)."""
        deadline = None
        while True:
            try:
                if self.client is None:
                    self.client = connect(self.args)
                    deadline = None
                return attempt(self.client)
            except BrokenPipeError:
                raise  # our stdout's reader went away, not the daemon
            except (ConnectionError, DaemonUnavailable, OSError):
                self.close()
                deadline = deadline or time.monotonic() + RECONNECT_SECONDS
                if time.monotonic() > deadline:
                    raise CliError(f"lost the daemon and it did not come back within {RECONNECT_SECONDS:g}s", CliExit.UNAVAILABLE) from None
                time.sleep(0.2)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def print_rows(client: Client, printer: RowPrinter, cmd: str, **args: Any) -> dict[str, Any]:
    """Send a request, print the rows it brings, return its final result."""
    for message in client.messages(cmd, **args):
        if "row" in message:
            printer.write(message["row"])
        else:
            return result_of(message)
    raise ConnectionError("no reply")


def follow_rows(daemon: Reconnecting, session_id: str, since_seq: int, printer: RowPrinter, stream: str | None) -> dict[str, Any]:
    """Follow a transcript to the session's end, reconnecting if the daemon restarts:
    each attempt asks for the rows after the last one printed, so none comes twice."""
    return daemon.run(
        lambda client: print_rows(client, printer, "follow", session=session_id, since_seq=max(since_seq, printer.last_seq), stream=stream)
    )


def exit_status_of(session: dict[str, Any]) -> int:
    if session["signal"] is not None:
        return 128 + session["signal"]
    if session["exit_code"] is not None:
        return session["exit_code"]
    if session["status"] == Status.COMPLETED:
        return CliExit.OK
    return CliExit.NOT_STARTED if session.get("started_at") is None or session["pid"] is None else CliExit.REFUSED


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    session = client.request("start", **start_args(args))
    printer = RowPrinter("json" if args.json else "split", None if args.json else {Stream.STDOUT, Stream.STDERR})
    daemon = Reconnecting(args, client)
    try:
        final = follow_rows(daemon, session["id"], 0, printer, None)
    finally:
        daemon.close()
    if final["status"] == Status.FAILED and final["pid"] is None:
        print(f"slotctl: session {short_id(final['id'])} could not start: {final['reason']}", file=sys.stderr)
    elif final["status"] in (Status.LOST, Status.CANCELLED):
        print(f"slotctl: session {short_id(final['id'])} {final['status']}: {final['reason']}", file=sys.stderr)
    return exit_status_of(final)


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
        print_sessions(sessions())
    if final["hidden"]:
        print(f"{final['hidden']} older ended sessions not shown (ps -a)", file=sys.stderr)
    return CliExit.OK


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    session = client.request("show", session=args.id)
    print_json(session) if args.json else print_session(session)
    return CliExit.OK


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    mode = "json" if args.json else "raw" if args.raw else "human"
    if args.stream:
        streams = {args.stream}
    elif args.raw:
        streams = {Stream.STDOUT, Stream.STDERR}  # raw means the bytes the command wrote
    else:
        streams = None
    printer = RowPrinter(mode, streams)
    since_seq, since_time = args.since if args.since is not None else (None, None)
    request = {"session": args.id, "tail": args.n, "since_seq": since_seq, "since_time": since_time, "stream": args.stream}
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


def simple(command: str, **extra_args: str):
    """A command that takes a session id and prints the session it returns."""

    def run(client: Client, args: argparse.Namespace) -> int:
        extras = {name: getattr(args, attr) for name, attr in extra_args.items()}
        session = client.request(command, session=args.id, **extras)
        if args.json:
            print_json(session)
        else:
            print(f"{session['id']} {session['status']}" + (f" ({session['reason']})" if session.get("reason") else ""))
        return CliExit.OK

    return run


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    result = client.request("delete", session=args.id)
    print_json(result) if args.json else print(f"deleted {result['deleted']}")
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
            raise CliError("prune --all deletes every ended session: add -y to confirm (no terminal to ask on)", CliExit.USAGE)
        if not confirmed("Delete every ended session and its transcript?"):
            print("slotctl: nothing pruned", file=sys.stderr)
            return CliExit.OK
    result = client.request("prune", older_than=args.older_than, status=args.status or None)
    print_json(result) if args.json else print(f"pruned {len(result['deleted'])} sessions")
    return CliExit.OK


def daemon_command(command: str):
    def run(client: Client, args: argparse.Namespace) -> int:
        extras = {"mode": args.mode} if command == "shutdown" else {}
        result = client.request(command, **extras)
        if args.json:
            print_json(result)
        elif command == "info" or command in ("drain", "undrain"):
            for key, value in result.items():
                print(f"{key + ':':16} {human_value(key, value)}")
        else:
            print(f"shutting down ({result['mode']})")
        return CliExit.OK

    return run


# -- parser ---------------------------------------------------------------------------

# Each protocol command has a subcommand of the same name, but for these
# (tests/test_commands.py checks both lists; docs/protocol.md says where `follow` is used):
COMMANDS_WITHOUT_SUBCOMMAND = frozenset({"follow"})  # what `logs -f` and `run` do after their first request
# and these subcommands are slotctl's own, not protocol commands:
SUBCOMMANDS_OF_ITS_OWN = frozenset({"run"})  # a `start`, then a `follow` to the session's end

# Argument types: a bad value is a usage error (exit 2) naming the option, never a
# traceback or a request the daemon must refuse.

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds_arg(text: str) -> float:
    """A finite number of seconds >= 0 (nan, inf and 1e400 are not)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def duration_arg(text: str) -> float:
    """An age with its unit (30s, 12h, 7d, 1.5w), in seconds; a bare number is refused."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([smhdw])", text, re.ASCII)
    seconds = float(match[1]) * DURATION_UNITS[match[2]] if match else math.nan
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"expected an age with a unit (30s, 12h, 7d, 2w), got {text!r}")
    return seconds


def since_arg(text: str) -> tuple[int | None, str | None]:
    """(since_seq, since_time): a sequence number, or an ISO 8601 time."""
    if text.isascii() and text.isdigit():
        return int(text), None
    try:
        datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a sequence number or an ISO 8601 time, got {text!r}") from None
    return None, text


def signal_arg(text: str) -> int | str:
    """A signal number (sent as a number) or name (the daemon checks it)."""
    return int(text) if text.isascii() and text.isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("--socket", default=argparse.SUPPRESS, help="the daemon's socket (default: $SLOTD_SOCKET, else from the config)")
    common.add_argument("--config", default=argparse.SUPPRESS, help="the daemon's config file, to find its socket")

    parser = argparse.ArgumentParser(prog="slotctl", description="Control slotd, the session supervisor.", parents=[common])
    parser.add_argument("--version", action="version", version=f"slotctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    for name, func, help_text in (
        ("start", cmd_start, "start a session (queued when every slot is busy)"),
        ("run", cmd_run, "start a session, print its output, exit with its exit code"),
    ):
        p = add(name, func, help_text)
        p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="add to its environment")
        p.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE", help="attach a label")
        p.add_argument("--labels-json", metavar="JSON", help="labels as a JSON object")
        p.add_argument("-p", "--priority", type=int, default=0, help="higher starts first (default 0)")
        p.add_argument("-C", "--cwd", help="working directory (default: here)")
        p.add_argument("--no-queue", action="store_true", help="refuse instead of queueing when every slot is busy")
        if name == "start":
            p.add_argument("-q", "--quiet", action="store_true", help="print only the id")
        p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")

    p = add("ps", cmd_ps, "list sessions, the ones waiting for a person first")
    p.add_argument("-s", "--status", action="append", default=[], help="only this status (repeatable)")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE", help="only sessions with this label")
    p.add_argument("-n", "--limit", type=int, help="at most this many")
    p.add_argument("-a", "--all", action="store_true", help=f"every ended session, not only the {PS_RECENT_ENDED} latest")

    p = add("show", cmd_show, "show one session")
    p.add_argument("id")

    p = add("logs", cmd_logs, "print a session's transcript")
    p.add_argument("id")
    p.add_argument("-n", type=int, metavar="N", help="only the last N lines")
    p.add_argument("--since", type=since_arg, metavar="SEQ|TIME", help="rows after this sequence number, or since this ISO time")
    p.add_argument("--stream", choices=[stream.value for stream in STREAMS], help="one stream only")
    p.add_argument("--raw", action="store_true", help="the exact bytes the command wrote, nothing added")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the session ends")

    p = add("send", cmd_send, "write to a session's stdin")
    p.add_argument("id")
    p.add_argument("data", nargs="?", help="text to send (a newline is added)")
    p.add_argument("-n", "--no-newline", action="store_true", help="do not add a newline")
    p.add_argument("--stdin", action="store_true", help="send what slotctl reads from its own stdin")
    p.add_argument("--eof", action="store_true", help="close the session's stdin afterwards")

    p = add("stop", simple("stop", timeout="timeout"), "SIGTERM the session's process group, SIGKILL after a timeout")
    p.add_argument("id")
    p.add_argument("-t", "--timeout", type=seconds_arg, help="seconds before SIGKILL (default: stop_timeout)")

    p = add("kill", simple("kill", signal="signal"), "send a signal to the session's process group")
    p.add_argument("id")
    p.add_argument("-s", "--signal", type=signal_arg, default="KILL", help="signal name or number (default KILL)")

    for name, help_text in (
        ("pause", "SIGSTOP the session (it keeps its slot)"),
        ("resume", "SIGCONT a paused session"),
        ("cancel", "cancel a queued session"),
    ):
        add(name, simple(name), help_text).add_argument("id")

    add("delete", cmd_delete, "delete an ended session and its transcript").add_argument("id")

    p = add("prune", cmd_prune, "delete ended sessions: those a filter selects, or --all")
    p.add_argument("--older-than", type=duration_arg, metavar="AGE", help="only those ended longer ago (30s, 12h, 7d, 2w: a unit is required)")
    p.add_argument("-s", "--status", action="append", default=[], help="only this status (repeatable)")
    p.add_argument(
        "--all", action="store_true",
        help="every ended session; asks on a terminal unless -y, and without a terminal needs -y (as docker's --force)",
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before --all")

    add("drain", daemon_command("drain"), "stop starting queued sessions")
    add("undrain", daemon_command("undrain"), "start queued sessions again")
    add("info", daemon_command("info"), "the daemon's state")
    p = add("shutdown", daemon_command("shutdown"), "stop the daemon")
    p.add_argument("--mode", choices=["keep", "stop"], help="keep sessions running (default from config) or stop them")
    return parser


def connect(args: argparse.Namespace) -> Client:
    try:
        path = find_socket(getattr(args, "socket", None), getattr(args, "config", None))
    except ConfigError as error:
        raise CliError(f"configuration error: {error}", CliExit.USAGE) from None
    return Client(path)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        with connect(args) as client:
            status = args.func(client, args)
    except DaemonUnavailable as error:
        print(f"slotctl: {error}", file=sys.stderr)
        status = CliExit.UNAVAILABLE
    except RemoteError as error:
        if args.json:
            print_json({"error": {"code": error.code, "message": error.message}})
        print(f"slotctl: {error.message} [{error.code}]", file=sys.stderr)
        status = CliExit.REFUSED
    except CliError as error:
        print(f"slotctl: {error}", file=sys.stderr)
        status = error.status
    except BrokenPipeError:
        # Our reader (head, less) went away: stop quietly, as cat does. (The client
        # reports a broken socket as ConnectionResetError, so this is our stdout.)
        # Python flushes stdout once more at exit; pointed at /dev/null, it cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = CliExit.OK
    except ConnectionError as error:
        print(f"slotctl: lost the connection to slotd: {error}", file=sys.stderr)
        status = CliExit.UNAVAILABLE
    except KeyboardInterrupt:
        status = 130
    sys.exit(status)


if __name__ == "__main__":
    main()
