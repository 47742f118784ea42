"""Text for people on a terminal: what a session chose (its command, labels, directory)
shown as itself but never able to drive the terminal, widths as the terminal counts them,
and colour where it helps and is wanted (NO_COLOR, --color)."""

from __future__ import annotations

import os
import sys
import unicodedata
from typing import TextIO

from supervisor.model import Status

# Control characters (C0, DEL, C1) would move the cursor, clear the screen or start an
# escape sequence; format characters (bidirectional overrides, zero-width joiners) make
# text read as other than it is. Both are shown escaped, as Python writes them.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf"})

# Statuses by colour (SGR): what needs a person stands out, what ended well recedes.
STATUS_COLOURS: dict[str, str] = {
    Status.QUEUED: "2",  # dim
    Status.RUNNING: "32",  # green
    Status.PAUSED: "36",  # cyan
    Status.WAITING_CHECKPOINT: "1;33",  # bold yellow
    Status.COMPLETED: "",
    Status.FAILED: "31",  # red
    Status.KILLED: "35",  # magenta
    Status.LOST: "1;31",  # bold red
    Status.CANCELLED: "2",
}


def printable(text: str) -> str:
    """text as itself (accents, CJK, emoji), its control and format characters escaped."""
    if text.isprintable():
        return text
    return "".join(
        char.encode("unicode_escape").decode("ascii") if unicodedata.category(char) in HIDDEN_CATEGORIES else char
        for char in text
    )


def display_width(text: str) -> int:
    """Columns a terminal gives text: two for wide (CJK) characters, none for combining marks."""
    return sum(
        0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text
    )


def fit(text: str, width: int) -> str:
    """text cut to at most width columns, an ellipsis marking the cut."""
    if display_width(text) <= width:
        return text
    kept, used = [], 0
    for char in text:
        used += display_width(char)
        if used > width - 1:
            break
        kept.append(char)
    return "".join(kept) + "…"


def pad(text: str, width: int) -> str:
    return text + " " * (width - display_width(text))


def wants_colour(choice: str, stream: TextIO = sys.stdout) -> bool:
    """--color: always, never, or auto (a terminal, unless NO_COLOR is set or TERM is dumb)."""
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except ValueError:
        return False


def coloured(text: str, sgr: str, colour: bool) -> str:
    return f"\x1b[{sgr}m{text}\x1b[0m" if colour and sgr else text


def terminal_columns(stream: TextIO = sys.stdout) -> int | None:
    """The width of the terminal stream writes to, or None if it is not one."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or None
    except (OSError, ValueError):
        return None
