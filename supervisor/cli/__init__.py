"""slotctl: the command-line client. Human tables by default, --json for scripts.

The parser and main live here; cli.commands has the subcommands, cli.output what they
print, cli.connection how they reach the daemon. Exit statuses: supervisor/errors.py's
CliExit (``slotctl run`` exits with the session's own status instead).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

from supervisor import __version__
from supervisor.cli.attach import DEFAULT_DETACH_KEYS, cmd_attach
from supervisor.cli.bulk import add_selection, deleted_line, on_sessions, signalled_line, status_line, stopped_line
from supervisor.cli.commands import (
    cmd_logs,
    cmd_prune,
    cmd_ps,
    cmd_restart,
    cmd_send,
    cmd_show,
    cmd_start,
    daemon_command,
)
from supervisor.cli.completion import SHELLS, cmd_completion, complete
from supervisor.cli.connection import connect
from supervisor.cli.dashboard import DEFAULT_LISTEN, cmd_dashboard, host_name_arg, listen_arg
from supervisor.cli.editing import cmd_edit, cmd_label
from supervisor.cli.mcp import cmd_mcp
from supervisor.cli.output import print_json
from supervisor.cli.run import cmd_run
from supervisor.cli.style import wants_colour
from supervisor.cli.times import Bound, parse_bound
from supervisor.cli.wait import cmd_wait
from supervisor.client import DaemonUnavailable, RemoteError
from supervisor.errors import CliError, CliExit
from supervisor.model import MAX_TERMINAL_SIDE, NICE_MAX, STREAMS, TerminalSize
from supervisor.wire import PS_RECENT_ENDED, WAIT_UNTIL

# Each protocol command has a subcommand of the same name, but for these
# (tests/test_commands.py checks both lists; docs/protocol.md says where `follow` is used):
COMMANDS_WITHOUT_SUBCOMMAND = frozenset(
    {
        "follow",  # what `logs -f`, `run` and `attach` do after their first request
        "screen",  # what `attach` draws first
        "resize",  # what `attach` sends when its window changes
    }
)
# and these subcommands are slotctl's own, not protocol commands:
SUBCOMMAND_ALIASES = {"rerun": "restart"}  # pueue's and people's other name for it
SUBCOMMANDS_OF_ITS_OWN = frozenset(
    {
        "run",  # a `start`, then a `follow` to the session's end
        "attach",  # `screen`, then `follow` of the tty stream, with `send` and `resize`
        "completion",  # the shell's side of completion: needs no daemon
        "mcp",  # an MCP server on stdio: each of its tool calls makes requests
        "dashboard",  # a web page: each of its streams and actions makes requests
        *SUBCOMMAND_ALIASES,
    }
)

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


SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size_arg(text: str) -> int:
    """A size in bytes, with an optional binary unit (512M, 2G; K, M, G, T, with or
    without iB), as docker's --memory and systemd's MemoryMax= take it."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?", text.strip(), re.ASCII | re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M or 2G, got {text!r}")
    return int(float(match[1]) * SIZE_UNITS[match[2].upper()])


def timeout_arg(text: str) -> float:
    """A time to wait, in seconds: a number (90, 1.5) or one with a unit (30s, 10m, 2h)."""
    for parse in (seconds_arg, duration_arg):
        try:
            return parse(text)
        except argparse.ArgumentTypeError:
            pass
    raise argparse.ArgumentTypeError(f"expected seconds or a duration with a unit (90, 30s, 10m, 2h), got {text!r}")


def bound_arg(text: str) -> Bound:
    """Where --since or --until puts a bound: a sequence number, or a time as journalctl
    takes one (relative, local, or ISO with a zone)."""
    try:
        return parse_bound(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def terminal_size_arg(text: str) -> TerminalSize:
    """A window size as COLSxROWS (120x40), each from 1 to MAX_TERMINAL_SIDE."""
    match = re.fullmatch(r"([0-9]{1,9})[xX]([0-9]{1,9})", text, re.ASCII)
    if not match or not all(1 <= int(side) <= MAX_TERMINAL_SIDE for side in match.groups()):
        raise argparse.ArgumentTypeError(f"expected COLSxROWS, each from 1 to {MAX_TERMINAL_SIDE}, got {text!r}")
    return TerminalSize(int(match[1]), int(match[2]))


def signal_arg(text: str) -> int | str:
    """A signal number (sent as a number) or name (the daemon checks it)."""
    return int(text) if text.isascii() and text.isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument(
        "--socket", default=argparse.SUPPRESS, help="the daemon's socket (default: $SLOTD_SOCKET, else from the config)"
    )
    common.add_argument("--config", default=argparse.SUPPRESS, help="the daemon's config file, to find its socket")
    common.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default=argparse.SUPPRESS,
        help="colour statuses: on a terminal unless NO_COLOR is set (auto, the default), always, never",
    )

    parser = argparse.ArgumentParser(
        prog="slotctl", description="Control slotd, the session supervisor.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"slotctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
        aliases = [alias for alias, command in SUBCOMMAND_ALIASES.items() if command == name]
        p = sub.add_parser(
            name, aliases=aliases, parents=[common], help=help_text, description=description or help_text
        )
        p.set_defaults(func=func)
        return p

    for name, func, help_text in (
        ("start", cmd_start, "start a session (queued when every slot is busy)"),
        ("run", cmd_run, "start a session, print its output, exit with its exit code"),
    ):
        p = add(name, func, help_text)
        p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="set in its environment")
        p.add_argument("-u", "--unset", action="append", default=[], metavar="KEY", help="leave out of its environment")
        p.add_argument(
            "--env-clear",
            action="store_true",
            help="start from an empty environment, not slotctl's own (then -e adds to it)",
        )
        p.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE", help="attach a label")
        p.add_argument("--labels-json", metavar="JSON", help="labels as a JSON object")
        p.add_argument("-p", "--priority", type=int, default=0, help="higher starts first (default 0)")
        p.add_argument(
            "--nice",
            type=int,
            metavar="N",
            help=f"CPU niceness of its command, 0-{NICE_MAX}, higher yields more (default: the daemon's session_nice)",
        )
        p.add_argument(
            "--timeout",
            type=duration_arg,
            metavar="DURATION",
            help="stop it (as `stop` does) once it has run this long: 90s, 10m, 2h, 1d (status killed)",
        )
        p.add_argument(
            "--memory",
            type=size_arg,
            metavar="SIZE",
            help="memory each of its processes may map (RLIMIT_AS): 512M, 2G, or bytes; at least 16M",
        )
        p.add_argument("-C", "--cwd", help="working directory (default: here)")
        p.add_argument("--no-queue", action="store_true", help="refuse instead of queueing when every slot is busy")
        p.add_argument(
            "-t", "--tty", action="store_true", help="run it on a pseudo-terminal (its stdout and stderr become one)"
        )
        p.add_argument(
            "--size",
            type=terminal_size_arg,
            metavar="COLSxROWS",
            help="the terminal's size with --tty (default: slotctl's own terminal's, else 80x24)",
        )
        if name == "start":
            p.add_argument("-q", "--quiet", action="store_true", help="print only the id")
        else:
            p.add_argument(
                "-q", "--quiet", action="store_true", help="do not say which session it is (on stderr) when it starts"
            )
            p.add_argument(
                "-i",
                "--interactive",
                action="store_true",
                help="pass stdin on even from a terminal (without it: only a pipe or a file, as in `echo y | slotctl run`)",
            )
            p.add_argument(
                "--detach-on-interrupt",
                action="store_true",
                help="Ctrl-C stops following and leaves the session running, instead of passing SIGINT on to it",
            )
        p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")

    p = add(
        "restart",
        cmd_restart,
        "start a new session like an old one (alias: rerun)",
        "Start a new session with the argv, cwd, env, labels, priority, nice and terminal of an "
        "ended or live one, recorded as its restart (show: restart_of). The old session is left "
        "as it is: a live one is not stopped (stop it first to replace it).",
    )
    p.add_argument("id")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the new id")

    p = add("ps", cmd_ps, "list sessions, the ones waiting for a person first")
    p.add_argument("-s", "--status", action="append", default=[], help="only this status (repeatable)")
    p.add_argument(
        "-l", "--label", action="append", default=[], metavar="KEY=VALUE", help="only sessions with this label"
    )
    p.add_argument("-n", "--limit", type=int, help="at most this many")
    p.add_argument(
        "-a", "--all", action="store_true", help=f"every ended session, not only the {PS_RECENT_ENDED} latest"
    )

    p = add("show", cmd_show, "show one session")
    p.add_argument("id")
    p.add_argument(
        "--env", dest="env_values", action="store_true", help="its environment's values too, not only their names"
    )

    p = add("logs", cmd_logs, "print a session's transcript")
    p.add_argument("id")
    p.add_argument("-n", type=int, metavar="N", help="only the last N lines")
    p.add_argument(
        "--since",
        type=bound_arg,
        metavar="SEQ|TIME",
        help="rows after this sequence number, or from this time: 30s, 10m, 2h, 1d, '10 min ago' (relative), "
        "18:24 (today), '2026-11-29 18:24' (local time unless a zone is given), or ISO 8601",
    )
    p.add_argument(
        "--until", type=bound_arg, metavar="SEQ|TIME", help="rows up to this sequence number, or before this time"
    )
    p.add_argument("--stream", choices=[stream.value for stream in STREAMS], help="one stream only")
    p.add_argument("--raw", action="store_true", help="the exact bytes the command wrote, nothing added")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the session ends")
    p.add_argument(
        "-t", "--timestamps", action="store_true", help="begin each line with the local time its output was read"
    )
    p.add_argument(
        "--merge", action="store_true", help="the command's stderr on slotctl's stdout too (default: on its stderr)"
    )
    p.add_argument("--no-markers", action="store_true", help="leave out slotd's own [slotd] lines")

    p = add("wait", cmd_wait, "wait until sessions end; exit with the exit status of the last to end")
    p.add_argument("ids", nargs="+", metavar="ID", help="session ids or unique prefixes")
    p.add_argument("--any", action="store_true", help="return when the first of them ends, with its exit status")
    p.add_argument(
        "--until",
        choices=WAIT_UNTIL,
        default="end",
        help=f"end: until they end (default); checkpoint: until they wait at a checkpoint (exit 0), "
        f"or exit {CliExit.NO_CHECKPOINT} if one ends first",
    )
    p.add_argument(
        "--timeout",
        type=timeout_arg,
        metavar="DURATION",
        help=f"give up after this long (90, 30s, 10m, 2h): exit {CliExit.TIMED_OUT}, naming those still running",
    )

    p = add("send", cmd_send, "write to a session's stdin")
    p.add_argument("id")
    p.add_argument("data", nargs="?", help="text to send (a newline is added)")
    p.add_argument("-n", "--no-newline", action="store_true", help="do not add a newline")
    p.add_argument("--stdin", action="store_true", help="send what slotctl reads from its own stdin")
    p.add_argument(
        "--eof", action="store_true", help="close the session's stdin afterwards (a tty session's: type Ctrl-D)"
    )

    p = add(
        "attach",
        cmd_attach,
        "use a tty session's terminal here: its screen, its output, your keys (detach: Ctrl-P Ctrl-Q)",
    )
    p.add_argument("id")
    p.add_argument(
        "--detach-keys",
        default=DEFAULT_DETACH_KEYS,
        metavar="KEYS",
        help=f"the keys that detach, leaving the session running (default {DEFAULT_DETACH_KEYS}; a character or ctrl-X each)",
    )

    p = add("completion", cmd_completion, "print the shell code that completes slotctl's commands and session ids")
    p.add_argument("shell", choices=SHELLS, help='source it: eval "$(slotctl completion bash)" in ~/.bashrc')

    add(
        "mcp",
        cmd_mcp,
        "serve MCP on stdin and stdout, for AI agents' clients (needs pip install 'slotd[mcp]')",
        "An MCP server on stdio: an MCP client (Claude Code, Claude Desktop, Cursor) starts it and calls its tools "
        "to start sessions, wait for them, read their output and answer their prompts, as this user.",
    )

    p = add(
        "dashboard",
        cmd_dashboard,
        "serve a web page of the sessions, their output live and their buttons (needs pip install 'slotd[dashboard]')",
        "A local web page: the sessions, the queue, each session's output live, and stop/kill/cancel/pause/"
        "resume/restart and input. It prints the URL to open, with the token that lets a browser in.",
    )
    p.add_argument(
        "--listen",
        type=listen_arg,
        default=listen_arg(DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help="the address to serve on (default 127.0.0.1 on a free port); not loopback only with a warning",
    )
    p.add_argument(
        "--allow-host",
        type=host_name_arg,
        action="append",
        default=[],
        metavar="NAME",
        help="a host name (or address) browsers reach it by, besides the listen address and localhost; repeatable",
    )
    p.add_argument(
        "--new-token",
        action="store_true",
        help="start with a new token, replacing the kept one (dashboard.token beside the daemon's socket): "
        "pages opened with the old one are refused",
    )

    p = add(
        "stop",
        on_sessions("stop", stopped_line, timeout="timeout"),
        "SIGTERM sessions' process groups, SIGKILL after a timeout (a queued one is cancelled)",
    )
    add_selection(p, "stop", ("-s", "--status"))
    p.add_argument("-t", "--timeout", type=seconds_arg, help="seconds before SIGKILL (default: stop_timeout)")

    p = add("kill", on_sessions("kill", signalled_line, signal="signal"), "send a signal to sessions' process groups")
    add_selection(p, "kill", ("--status",))
    p.add_argument("-s", "--signal", type=signal_arg, default="KILL", help="signal name or number (default KILL)")

    for name, describe, help_text in (
        ("pause", status_line, "SIGSTOP sessions (they keep their slots)"),
        ("resume", status_line, "SIGCONT paused sessions"),
        ("cancel", status_line, "take queued sessions off the queue"),
        ("delete", deleted_line, "delete ended sessions and their transcripts"),
    ):
        add_selection(add(name, on_sessions(name, describe), help_text), name, ("-s", "--status"))

    p = add("edit", cmd_edit, "change a queued session: priority, command, directory, environment, labels")
    p.add_argument("id")
    p.add_argument("-p", "--priority", type=int, help="a new priority (higher starts first)")
    p.add_argument("-C", "--cwd", type=os.path.abspath, help="a new working directory")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="set in its environment")
    p.add_argument("-u", "--unset", action="append", default=[], metavar="KEY", help="remove from its environment")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE", help="add or change a label")
    p.add_argument("--labels-json", metavar="JSON", help="labels to add or change, as a JSON object")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]", help="a new command")

    p = add("label", cmd_label, "set or remove labels of any session, live or ended")
    p.add_argument("id")
    p.add_argument("pairs", nargs="*", metavar="KEY=VALUE", help="labels to set")
    p.add_argument("-d", "--delete", action="append", default=[], metavar="KEY", help="a label to remove")

    p = add("prune", cmd_prune, "delete ended sessions: those a filter selects, or --all")
    p.add_argument(
        "--older-than",
        type=duration_arg,
        metavar="AGE",
        help="only those ended longer ago (30s, 12h, 7d, 2w: a unit is required)",
    )
    p.add_argument("-s", "--status", action="append", default=[], help="only this status (repeatable)")
    p.add_argument(
        "--all",
        action="store_true",
        help="every ended session; asks on a terminal unless -y, and without a terminal needs -y (as docker's --force)",
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before --all")

    add("drain", daemon_command("drain"), "stop starting queued sessions")
    add("undrain", daemon_command("undrain"), "start queued sessions again")
    add("info", daemon_command("info"), "the daemon's state")
    p = add(
        "slots",
        daemon_command("slots"),
        "run at most N sessions at once, from now on and after restarts (fewer stops nothing, only starts fewer)",
    )
    p.add_argument("count", type=int, metavar="N")
    p = add("shutdown", daemon_command("shutdown"), "stop the daemon")
    p.add_argument("--mode", choices=["keep", "stop"], help="keep sessions running (default from config) or stop them")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    complete(parser)  # a shell asking for completions is answered here
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    args.colour = wants_colour(getattr(args, "color", "auto"))
    if args.func is cmd_completion:
        sys.exit(cmd_completion(args))
    try:
        if args.func is cmd_mcp:
            status = cmd_mcp(args)  # starts with no daemon: each tool call connects
        elif args.func is cmd_dashboard:
            status = cmd_dashboard(args)  # likewise: each request of the page connects
        else:
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


if __name__ == "__main__":
    main()
