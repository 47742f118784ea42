"""What slotctl prints: tables and fields for people, JSON for scripts, transcript rows."""

from __future__ import annotations

import datetime
import json
import re
import signal
import sys
import textwrap
import time
from collections.abc import Iterable
from typing import Any, BinaryIO

from supervisor.cli.style import (
    STATUS_COLOURS,
    coloured,
    display_width,
    fit,
    pad,
    printable,
    terminal_columns,
)
from supervisor.cli.times import local_stamp
from supervisor.model import Stream, duration_text, unix_from_iso
from supervisor.wire import EXITED_WHILE_BLOCKED, decode_data


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def short_id(session_id: str) -> str:
    return session_id[:8]


def age(iso: str | None) -> str:
    if not iso:
        return "-"
    return age_text(time.time() - unix_from_iso(iso))


def command_text(argv: list[str], width: int = 40) -> str:
    # Shown as itself (héllo, 日本), but a control character (a newline in a `python -c`
    # program, an escape sequence) would break the table or drive the terminal.
    return fit(printable(" ".join(argv)), width)


def human_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if key.endswith("_bytes") and isinstance(value, int):
        return byte_size_text(value)
    if key == "uptime":
        return age_text(value)
    if key == "live" and isinstance(value, list):
        return (
            ", ".join(f"slot {item['slot']}: {short_id(item['session'])} {status_text(item)}" for item in value) or "-"
        )
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def byte_size_text(value: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


def age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


def outcome(session: dict[str, Any]) -> str:
    if session["signal"] is not None:
        return signal_name(session["signal"])
    if session["exit_code"] is not None:
        return str(session["exit_code"])
    return "-"


# Columns a table may narrow to fit a terminal, the last first, and how far.
SHRINKABLE = {"LABELS": 10, "COMMAND": 10}


def print_table(headers: list[str], rows: list[list[str]], colour: bool = False, columns: int | None = None) -> None:
    """A table with a header line; on a terminal of `columns`, its shrinkable columns
    narrowed (their cells cut with an ellipsis) until it fits; STATUS cells coloured."""
    widths = [
        max(display_width(h), *(display_width(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    if columns is not None:
        excess = sum(widths) + 2 * (len(widths) - 1) - columns
        for name in ("LABELS", "COMMAND"):
            if excess > 0 and name in headers:
                index = headers.index(name)
                narrower = min(widths[index], max(SHRINKABLE[name], widths[index] - excess, len(name)))
                excess -= widths[index] - narrower
                widths[index] = narrower
    status = headers.index("STATUS") if "STATUS" in headers else None
    print("  ".join(pad(h, w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        cells = [pad(fit(cell, width), width) for cell, width in zip(row, widths, strict=True)]
        if status is not None:
            cells[status] = coloured(cells[status], STATUS_COLOURS.get(row[status].split(" ")[0], ""), colour)
        print("  ".join(cells).rstrip())


def session_row(s: dict[str, Any]) -> list[str]:
    """A session's line of the `ps` table, cell by cell."""
    when = s["ended_at"] or s["started_at"] or s["queued_at"]
    labels = printable(",".join(f"{k}={v}" for k, v in s["labels"].items()))
    return [
        short_id(s["id"]),
        str(s["slot"] or "-"),
        status_text(s),
        str(s["priority"]),
        str(s["pid"] or "-"),
        outcome(s),
        age(when),
        command_text(s["argv"]),
        labels,
    ]


SESSION_HEADERS = ["ID", "SLOT", "STATUS", "PRI", "PID", "EXIT", "AGE", "COMMAND", "LABELS"]


def print_sessions(sessions: Iterable[dict[str, Any]], colour: bool = False) -> None:
    # The cells only are kept (the table's widths need every row): a tenth of the sessions' size.
    print_table(SESSION_HEADERS, [session_row(s) for s in sessions], colour, terminal_columns())


def print_json_array(values: Iterable[Any]) -> None:
    """Print values as print_json prints their list, each as soon as it comes."""
    opened = False
    for value in values:
        item = textwrap.indent(json.dumps(value, indent=2, sort_keys=True), "  ")
        sys.stdout.write((",\n" if opened else "[\n") + item)
        opened = True
    print("\n]" if opened else "[]")


def status_text(session: dict[str, Any]) -> str:
    """The status, and whether its output (and, once its command exited, its end)
    waits for room on a full runtime disk."""
    note = session.get("output_blocked")
    if not note:
        return session["status"]
    return session["status"] + (" (exited, disk full)" if note.endswith(EXITED_WHILE_BLOCKED) else " (disk full)")


# What `show` prints, in this order (the rest is for --json).
SHOWN_FIELDS = (
    "id",
    "status",
    "slot",
    "priority",
    "nice",
    "argv",
    "cwd",
    "tty",
    "timeout",
    "memory_limit",
    "env",
    "labels",
    "pid",
    "shim_pid",
    "exit_code",
    "signal",
    "reason",
    "output_blocked",
    "queued_at",
    "started_at",
    "ended_at",
    "restart_of",
)
TIMES = ("queued_at", "started_at", "ended_at")
SHOWN_WIDTH = max(len(name) for name in SHOWN_FIELDS) + 2  # a name, its colon, a space at least


def print_session(session: dict[str, Any], env_values: bool = False, colour: bool = False) -> None:
    """A session for people: local times, signal names, how long it ran; its
    environment's names only, unless env_values (it may hold secrets: a token in the
    environment of the shell that started it)."""
    for name in SHOWN_FIELDS:
        value = shown_value(session, name, env_values)
        if name == "status":
            value = coloured(value, STATUS_COLOURS.get(session["status"], ""), colour)
        print(f"{name + ':':{SHOWN_WIDTH}} {value}")
        if name == "ended_at" and session["started_at"]:
            print(f"{'ran:':{SHOWN_WIDTH}} {run_time_text(session)}")
    if "transcript" in session:
        t = session["transcript"]
        print(f"{'transcript:':{SHOWN_WIDTH}} {t['rows']} rows, {t['bytes']} bytes, last seq {t['last_seq']}")


def shown_value(session: dict[str, Any], name: str, env_values: bool) -> str:
    """One field of a session as `show` prints it ('-' for none), what the session chose
    with its control characters escaped."""
    value = session.get(name)
    if value is None or (value == {} and name in ("env", "labels")):
        return "-"
    if name == "tty":
        return f"{session['tty_cols']}x{session['tty_rows']}" if value else "-"
    if name == "timeout":
        return f"{duration_text(value)} (then stopped as by `stop`)"
    if name == "memory_limit":
        return f"{byte_size_text(value)} per process (RLIMIT_AS: address space)"
    if name == "signal":
        return f"{value} ({signal_name(value)})"
    if name in TIMES:
        return f"{datetime.datetime.fromtimestamp(unix_from_iso(value)):%Y-%m-%d %H:%M:%S} ({age(value)} ago)"
    if name == "env" and not env_values:
        return printable(" ".join(sorted(value))) + "   (names; --env shows values)"
    if isinstance(value, (list, dict)):
        return printable(json.dumps(value, ensure_ascii=False))
    return printable(str(value))


def run_time_text(session: dict[str, Any]) -> str:
    """How long it ran, or has been running."""
    end = unix_from_iso(session["ended_at"]) if session["ended_at"] else time.time()
    ran = duration_text(max(0.0, end - unix_from_iso(session["started_at"])))
    return ran if session["ended_at"] else f"{ran} so far"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# A line and its newline, or a last line without one.
LINES = re.compile(rb"[^\n]*\n|[^\n]+")


class RowPrinter:
    """Writes transcript rows: raw bytes, JSON lines, or for people (system rows marked)."""

    def __init__(
        self,
        mode: str,
        streams: set[str] | None,
        *,
        timestamps: bool = False,
        merge: bool = False,
        markers: bool = True,
    ) -> None:
        self.mode = mode
        self.streams = streams
        self.out = sys.stdout.buffer
        self.err = sys.stderr.buffer
        self.last_seq = 0
        # For people: each line prefixed with its row's local time; the command's stderr
        # on slotctl's stdout instead of its stderr; the [slotd] rows shown.
        self.timestamps = timestamps
        self.merge = merge
        self.markers = markers
        # The outputs whose last line so far has no newline (a prompt): a marker must
        # begin a line of its own, and -t must not stamp the rest of that line.
        self.open_lines: set[BinaryIO] = set()

    def write(self, row: dict[str, Any]) -> None:
        self.last_seq = max(self.last_seq, row["seq"])
        if self.mode == "json":
            self.out.write(json.dumps(row).encode() + b"\n")
            self.out.flush()
            return
        stream = row["stream"]
        if self.streams is not None and stream not in self.streams:
            return
        data = decode_data(row)
        if self.mode == "raw":
            self.out.write(data)
        elif self.mode == "split":  # slotctl run: the command's stderr to our stderr
            (self.err if stream == Stream.STDERR else self.out).write(data)
        else:
            self.write_for_people(stream, data, row["ts"])
        self.out.flush()
        self.err.flush()

    def write_for_people(self, stream: str, data: bytes, ts: str) -> None:
        """A row in the human format: markers, stderr apart unless merged, -t stamps."""
        if stream in (Stream.SYSTEM, Stream.STDIN):
            if stream == Stream.SYSTEM and not self.markers:
                return
            # On a line of its own, even after a last line without a newline.
            for output in self.open_lines:
                output.write(b"\n")
            self.open_lines.clear()
            marker = b"[slotd] " if stream == Stream.SYSTEM else b"[stdin] "
            data = marker + data + (b"" if data.endswith(b"\n") else b"\n")
        output = self.err if stream == Stream.STDERR and not self.merge else self.out
        if self.timestamps:
            prefix = local_stamp(unix_from_iso(ts)).encode() + b" "
            lines = LINES.findall(data)  # split at newlines only: a \r redraws a line
            data = b"".join(
                line if i == 0 and output in self.open_lines else prefix + line for i, line in enumerate(lines)
            )
        output.write(data)
        if data.endswith(b"\n"):
            self.open_lines.discard(output)
        elif data:
            self.open_lines.add(output)
