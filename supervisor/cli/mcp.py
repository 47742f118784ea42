"""`slotctl mcp`: the MCP server (supervisor/mcpserver), which needs the optional MCP SDK."""

from __future__ import annotations

import argparse
import sys

from supervisor.cli.connection import daemon_socket, where_slotctl_looked
from supervisor.errors import CliExit

INSTALL_HINT = "slotctl mcp needs the MCP SDK, an optional extra of slotd: pip install 'slotd[mcp]'"


def cmd_mcp(args: argparse.Namespace) -> int:
    try:
        from supervisor.mcpserver import serve
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in ("mcp", "mcp_types", "pydantic"):
            raise
        print(f"slotctl: {INSTALL_HINT} (no module {error.name!r})", file=sys.stderr)
        return CliExit.USAGE
    # Found now, so a configuration error stops it at once; the daemon need not be
    # running yet: each tool call connects afresh.
    serve(daemon_socket(args), where_slotctl_looked(args).replace("\n  ", " "))
    return CliExit.OK
