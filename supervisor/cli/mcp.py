"""`slotctl mcp`: the MCP server (supervisor/mcpserver), which needs the optional MCP SDK."""

from __future__ import annotations

import argparse

from supervisor.cli.connection import daemon_socket, where_slotctl_looked
from supervisor.cli.extras import load_extra
from supervisor.errors import CliExit

INSTALL_HINT = "slotctl mcp needs the MCP SDK, an optional extra of slotd: pip install 'slotd[mcp]'"


def cmd_mcp(args: argparse.Namespace) -> int:
    server = load_extra("supervisor.mcpserver", ("mcp", "mcp_types", "pydantic"), INSTALL_HINT)
    if server is None:
        return CliExit.USAGE
    # Found now, so a configuration error stops it at once; the daemon need not be
    # running yet: each tool call connects afresh.
    server.serve(daemon_socket(args), where_slotctl_looked(args).replace("\n  ", " "))
    return CliExit.OK
