"""Reaching the daemon: finding its socket, and connecting again after a loss while
following a transcript (the daemon restarted, or let a slow reader go)."""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from supervisor.cli.output import RowPrinter
from supervisor.client import Client, DaemonUnavailable, find_socket, result_of
from supervisor.config import find_config_file
from supervisor.errors import CliError, CliExit, ConfigError

T = TypeVar("T")

# How long `logs -f` keeps trying to reconnect to a restarting daemon.
RECONNECT_SECONDS = 120.0


def connect(args: argparse.Namespace) -> Client:
    path = daemon_socket(args)
    try:
        return Client(path)
    except DaemonUnavailable as error:
        raise DaemonUnavailable(f"{error}\n  {where_slotctl_looked(args)}") from None


def daemon_socket(args: argparse.Namespace) -> Path:
    """The socket slotctl talks to: --socket, $SLOTD_SOCKET, else the config's."""
    try:
        return find_socket(getattr(args, "socket", None), getattr(args, "config", None))
    except ConfigError as error:
        raise CliError(f"configuration error: {error}", CliExit.USAGE) from None


def where_slotctl_looked(args: argparse.Namespace) -> str:
    """Why slotctl tried the socket it tried, and how to point it elsewhere."""
    origin = socket_origin(getattr(args, "socket", None), getattr(args, "config", None))
    return (
        f"slotctl looked there because {origin}.\n"
        "  Point it at the daemon's socket with --socket PATH or $SLOTD_SOCKET, or at the daemon's "
        "config file with --config FILE or $SLOTD_CONFIG."
    )


def socket_origin(socket_option: str | None, config_option: str | None) -> str:
    """Why slotctl tried the socket it tried (find_socket's order)."""
    if socket_option:
        return "--socket named it"
    if os.environ.get("SLOTD_SOCKET"):
        return "$SLOTD_SOCKET names it"
    config = find_config_file(config_option, os.environ)
    if config is None:
        return "it is the built-in default (no config file: not given, no $SLOTD_CONFIG, none in the usual places)"
    how = "--config" if config_option else "$SLOTD_CONFIG" if os.environ.get("SLOTD_CONFIG") else "found there"
    return f"the config file {config} ({how}) names it"


class Stopped(Exception):
    """Reconnecting.stop() was called: whoever waited on the daemon is leaving."""


class Reconnecting:
    """One connection to the daemon at a time, opened again after a loss (the daemon
    restarted, or let a slow reader go) for up to RECONNECT_SECONDS, or a patience of
    the caller's."""

    def __init__(self, args: argparse.Namespace, client: Client | None, patience: float = RECONNECT_SECONDS) -> None:
        self.args = args
        self.client = client
        self.patience = patience
        self.stopped = False

    def run(self, attempt: Callable[[Client], T]) -> T:
        """attempt(client) until it returns; after a loss it is called again on a new
        connection, so it must ask for what it still lacks (rows after the last printed).
        Stopped once stop() is called, even while the daemon is away."""
        deadline = None
        while True:
            if self.stopped:
                raise Stopped
            try:
                if self.client is None:
                    self.client = connect(self.args)
                    deadline = None
                return attempt(self.client)
            except BrokenPipeError:
                raise  # our stdout's reader went away, not the daemon
            except (ConnectionError, DaemonUnavailable, OSError):
                self.close()
                deadline = deadline or time.monotonic() + self.patience
                if time.monotonic() > deadline:
                    raise CliError(
                        f"lost the daemon and it did not come back within {self.patience:g}s", CliExit.UNAVAILABLE
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        """From another thread: end run() at once, whatever it waits for."""
        self.stopped = True
        client = self.client
        if client is not None:
            try:
                client.sock.shutdown(socket.SHUT_RDWR)  # wakes a read in progress
            except OSError:
                pass

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


def follow_rows(
    daemon: Reconnecting, session_id: str, since_seq: int, printer: RowPrinter, stream: str | None
) -> dict[str, Any]:
    """Follow a transcript to the session's end, reconnecting if the daemon restarts:
    each attempt asks for the rows after the last one printed, so none comes twice."""
    return daemon.run(
        lambda client: print_rows(
            client, printer, "follow", session=session_id, since_seq=max(since_seq, printer.last_seq), stream=stream
        )
    )
