"""Subcommands that need an optional extra of slotd (`slotd[mcp]`, `slotd[dashboard]`):
their module, imported only when they run, or a clear word on what to install."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def load_extra(module: str, packages: tuple[str, ...], install_hint: str) -> ModuleType | None:
    """Import module; None (having said install_hint on stderr) when one of packages, the
    extra's, is missing. Any other missing module is a bug and is raised."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in packages:
            raise
        print(f"slotctl: {install_hint} (no module {error.name!r})", file=sys.stderr)
        return None
