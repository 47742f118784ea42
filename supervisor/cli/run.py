"""slotctl run: a session that behaves like the command run here, as `docker run` does.

It says which session it is (on stderr: stdout is the command's), prints the command's
output as it comes (its stderr to slotctl's stderr), passes slotctl's stdin on when that
is a pipe or a file (`echo y | slotctl run -- cmd`) and closes the session's at its end,
passes SIGINT (Ctrl-C), SIGTERM and SIGHUP on to the session's process group, and exits
with the session's exit status. Across a daemon restart it reconnects and goes on.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import stat
import sys
import threading
import time
from types import FrameType
from typing import Any

from supervisor.cli.commands import OUTPUT_STREAMS, exit_status_of, start_args
from supervisor.cli.connection import Reconnecting, connect, follow_rows
from supervisor.cli.output import RowPrinter, short_id
from supervisor.client import Client, DaemonUnavailable, RemoteError
from supervisor.errors import CliError
from supervisor.model import ENDED_STATUSES, Status

# What reaches slotctl and is meant for the command, as for `docker run`'s proxy.
PROXIED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STDIN_READ = 64 * 1024
QUEUED_RETRY = 0.2  # s between tries to give input to a session still queued


def stdin_to_forward(args: argparse.Namespace) -> bool:
    """Whether slotctl's stdin goes to the session: with -i, or when it is a pipe, a
    file or a socket. A terminal is the person's, kept for Ctrl-C; /dev/null or no stdin
    at all (cron, systemd, CI) says nothing, and closing the session's input for it would
    leave no way to answer a prompt later (`slotctl send`)."""
    if args.interactive:
        return True
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


class StdinForwarder:
    """slotctl's stdin to the session's, in a thread of its own: each read as it comes,
    then the end of input. Input for a session still queued waits for its start."""

    def __init__(self, args: argparse.Namespace, session_id: str) -> None:
        self.args = args
        self.session_id = session_id
        self.thread = threading.Thread(target=self._run, name="run-stdin", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        daemon = Reconnecting(self.args, None)
        try:
            while True:
                data = os.read(sys.stdin.fileno(), STDIN_READ)
                if not self._send(daemon, data, eof=not data):
                    return
                if not data:
                    return
        except OSError:
            return
        finally:
            daemon.close()

    def _send(self, daemon: Reconnecting, data: bytes, eof: bool) -> bool:
        """Send, waiting while the session is queued; False once it cannot take input."""
        encoded = base64.b64encode(data).decode("ascii")
        while True:
            try:
                daemon.run(lambda client: client.request("send", session=self.session_id, data_b64=encoded, eof=eof))
                return True
            except RemoteError as error:
                try:
                    status = daemon.run(lambda client: client.request("show", session=self.session_id)["status"])
                except (RemoteError, CliError):
                    return False
                if status != Status.QUEUED:
                    if status not in ENDED_STATUSES:
                        print(f"slotctl: input not passed on: {error.message}", file=sys.stderr)
                    return False
                time.sleep(QUEUED_RETRY)
            except CliError:
                return False


class Detach(Exception):
    """--detach-on-interrupt and Ctrl-C: stop following, leave the session running."""


class SignalProxy:
    """While installed, SIGINT, SIGTERM and SIGHUP to slotctl go to the session's
    process group (a queued session is cancelled instead); with detach, SIGINT stops
    following instead."""

    def __init__(self, args: argparse.Namespace, session_id: str) -> None:
        self.args = args
        self.session_id = session_id
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> SignalProxy:
        for signum in PROXIED_SIGNALS:
            self.previous[signum] = signal.signal(signum, self._received)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _received(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.args.detach_on_interrupt:
            raise Detach
        name = signal.Signals(signum).name
        try:
            with connect(self.args) as client:
                self._pass_on(client, name)
        except (DaemonUnavailable, OSError) as error:
            print(f"slotctl: could not pass {name} on to the session: {error}", file=sys.stderr)

    def _pass_on(self, client: Client, name: str) -> None:
        try:
            client.request("kill", session=self.session_id, signal=name)
        except RemoteError as error:
            try:
                client.request("cancel", session=self.session_id)  # still queued: it never runs
            except RemoteError:
                print(f"slotctl: {name} not passed on: {error.message}", file=sys.stderr)


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    session = client.request("start", **start_args(args))
    session_id = session["id"]
    printer = RowPrinter("json" if args.json else "split", None if args.json else OUTPUT_STREAMS)
    daemon = Reconnecting(args, client)
    try:
        with SignalProxy(args, session_id):
            if not args.quiet:
                where = (
                    "queued: every slot is busy" if session["status"] == Status.QUEUED else f"in slot {session['slot']}"
                )
                print(f"slotctl: session {session_id} {where}", file=sys.stderr, flush=True)
            if stdin_to_forward(args):
                StdinForwarder(args, session_id).start()
            final = follow_rows(daemon, session_id, 0, printer, None)
    except Detach:
        print(
            f"slotctl: stopped following session {short_id(session_id)}; it runs on "
            f"(slotctl logs -f {short_id(session_id)})",
            file=sys.stderr,
        )
        return 130
    finally:
        daemon.close()
    if final["status"] == Status.FAILED and final["pid"] is None:
        print(f"slotctl: session {short_id(final['id'])} could not start: {final['reason']}", file=sys.stderr)
    elif final["status"] in (Status.LOST, Status.CANCELLED):
        print(f"slotctl: session {short_id(final['id'])} {final['status']}: {final['reason']}", file=sys.stderr)
    return exit_status_of(final)
