"""`slotctl dashboard`: a local web page showing the sessions, the queue and each
session's output live, with the buttons and input box slotctl's commands give.

A separate process and a client of the control socket like slotctl (the daemon stays
free of HTTP), with the user's own credentials. Starlette served by Hypercorn's trio
worker, rather than Quart-Trio: Starlette is a small ASGI toolkit on anyio, so the same
async socket client as the MCP server (supervisor/asyncclient) runs on trio unchanged,
streaming responses (Server-Sent Events) need no framework of their own, and its
requests are plain ASGI, which the security layer (guard) wraps whole; Quart-Trio
brings Flask's app and request globals, and a trio port that trails Quart's releases.
Both are the optional extra slotd[dashboard].

guard has the security (token, cookie, Host, CSRF, Content-Security-Policy), tokenfile
keeps the token across restarts, app the routes, state the one poller of the daemon
that every open page shares, static the page and its script and style, all served from
the package.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from supervisor.asyncclient import Daemon
from supervisor.dashboard.app import build_app
from supervisor.dashboard.guard import Guard
from supervisor.dashboard.tokenfile import load_token, token_file

__all__ = ["load_token", "serve", "token_file"]


def serve(
    listening: socket.socket,
    host: str,
    token: str,
    daemon_socket: Path,
    where: str = "",
    allowed_hosts: tuple[str, ...] = (),
) -> None:
    """Serve the dashboard on a bound, listening socket until interrupted; print its
    URL, with the token that opens it, first. Browsers may reach it by the listen
    address, localhost and the allowed host names."""
    port = listening.getsockname()[1]
    guard = Guard(build_app(Daemon(daemon_socket, where)), token, host, port, allowed_hosts)
    config = Config()
    config.bind = [f"fd://{listening.fileno()}"]
    config.accesslog = None
    config.errorlog = "-"
    shown = f"[{host}]" if ":" in host else host
    print(f"slotctl dashboard: open http://{shown}:{port}/?token={guard.token}", flush=True)
    try:
        trio.run(hypercorn_serve, guard, config)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        print("slotctl dashboard: stopped", file=sys.stderr)
