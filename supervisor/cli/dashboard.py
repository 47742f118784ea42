"""`slotctl dashboard`: the web dashboard (supervisor/dashboard), which needs the
optional extra slotd[dashboard]; here its address is checked and its socket bound."""

from __future__ import annotations

import argparse
import ipaddress
import re
import socket
import sys

from supervisor.cli.connection import daemon_socket, where_slotctl_looked
from supervisor.cli.extras import load_extra
from supervisor.errors import CliError, CliExit, PathError

INSTALL_HINT = (
    "slotctl dashboard needs Starlette and Hypercorn, an optional extra of slotd: pip install 'slotd[dashboard]'"
)
DEFAULT_LISTEN = "127.0.0.1:0"


def listen_arg(text: str) -> tuple[str, int]:
    """HOST:PORT (an IP address; [::1]:PORT for IPv6; port 0 picks a free one)."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT with an IP address, such as 127.0.0.1:8765"
        ) from None
    if not sep or not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be 0 to 65535")
    return host, number


# A DNS name (RFC 1123 labels), as a browser's Host header carries it.
HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def host_name_arg(text: str) -> str:
    """A host name or IP address a browser reaches the dashboard by (no port: the
    listen port goes with it)."""
    bare = text.removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if not HOST_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a host name or IP address (give the name alone, such as dash.example.org, no port)"
        )
    return text.lower().removesuffix(".")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as error:
        listening.close()
        raise CliError(f"cannot listen on {host}:{port}: {error.strerror}", CliExit.USAGE) from None
    listening.listen(128)
    return listening


def cmd_dashboard(args: argparse.Namespace) -> int:
    dashboard = load_extra("supervisor.dashboard", ("starlette", "hypercorn", "anyio"), INSTALL_HINT)
    if dashboard is None:
        return CliExit.USAGE
    host, port = args.listen
    if not ipaddress.ip_address(host).is_loopback:
        print(
            f"slotctl dashboard: warning: listening on {host}, not loopback: anyone who can reach it and has "
            "the token can run commands as this user",
            file=sys.stderr,
        )
        if not args.allow_host:
            print(
                f"slotctl dashboard: browsers must reach it as {host} or localhost; to reach it by another name, "
                "give --allow-host NAME",
                file=sys.stderr,
            )
    socket_path = daemon_socket(args)
    try:
        token = dashboard.load_token(dashboard.token_file(socket_path), renew=args.new_token)
    except PathError as error:
        raise CliError(f"cannot use the dashboard's token: {error}", CliExit.USAGE) from None
    # The daemon need not be running yet: each stream and action connects afresh.
    dashboard.serve(
        bind(host, port),
        host,
        token,
        socket_path,
        where_slotctl_looked(args).replace("\n  ", " "),
        tuple(args.allow_host),
    )
    return CliExit.OK
