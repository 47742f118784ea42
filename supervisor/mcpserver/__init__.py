"""`slotctl mcp`: an MCP server on stdio that AI agents' clients (Claude Code, Claude
Desktop, Cursor, any MCP SDK) start as a subprocess, to start sessions, wait for them,
read their output and answer their prompts.

It is a client of the control socket like slotctl, with the user's own credentials, so
it can do what that user's slotctl can and nothing more. Built on the official MCP SDK
(the optional extra slotd[mcp]), which runs on anyio: here on its trio backend, as the
rest of slotd. tools has the tools and resources, excerpts how output is cut to a
budget, views what the tools return; supervisor/asyncclient is the socket client.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from supervisor.asyncclient import Daemon
from supervisor.mcpserver.tools import build_server


def serve(socket: Path, where: str = "") -> None:
    """Serve MCP on stdin and stdout until the client closes stdin."""
    server = build_server(Daemon(socket, where), os.getcwd())
    anyio.run(server.run_stdio_async, backend="trio")
