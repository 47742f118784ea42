"""What slotctl prints: tables and fields for people, JSON for scripts, transcript rows."""

from __future__ import annotations

import json
import re
import signal
import sys
import textwrap
import time
from collections.abc import Iterable
from typing import Any, BinaryIO

from supervisor.cli.times import local_stamp
from supervisor.model import Stream, duration_text, unix_from_iso
from supervisor.protocol import EXITED_WHILE_BLOCKED, decode_data


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def short_id(session_id: str) -> str:
    return session_id[:8]


def age(iso: str | None) -> str:
    if not iso:
        return "-"
    return age_text(time.time() - unix_from_iso(iso))


def command_text(argv: list[str], width: int = 40) -> str:
    # Control characters (a newline in a `python -c` program) would break the table.
    text = " ".join(argv).encode("unicode_escape").decode("ascii")
    return text if len(text) <= width else text[: width - 1] + "…"


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
        try:
            return signal.Signals(session["signal"]).name
        except ValueError:
            return f"sig{session['signal']}"
    if session["exit_code"] is not None:
        return str(session["exit_code"])
    return "-"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def session_row(s: dict[str, Any]) -> list[str]:
    """A session's line of the `ps` table, cell by cell."""
    when = s["ended_at"] or s["started_at"] or s["queued_at"]
    labels = ",".join(f"{k}={v}" for k, v in s["labels"].items())
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


def print_sessions(sessions: Iterable[dict[str, Any]]) -> None:
    # The cells only are kept (the table's widths need every row): a tenth of the sessions' size.
    print_table(SESSION_HEADERS, [session_row(s) for s in sessions])


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


def print_session(session: dict[str, Any], env_values: bool = False) -> None:
    """A session for people; its environment's names only, unless env_values (it may
    hold secrets: a token in the environment of the shell that started it)."""
    fields = [
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
    ]
    for name in fields:
        value = session.get(name)
        if name == "tty":
            value = f"{session['tty_cols']}x{session['tty_rows']}" if value else None
        elif name == "timeout" and value is not None:
            value = f"{duration_text(value)} (then stopped as by `stop`)"
        elif name == "env" and not env_values:
            value = " ".join(sorted(value)) + "   (names; --env shows values)" if value else None
        elif name == "memory_limit" and value is not None:
            value = f"{byte_size_text(value)} per process (RLIMIT_AS: address space)"
        if isinstance(value, (list, dict)):
            value = json.dumps(value)
        print(f"{name + ':':12} {'-' if value is None else value}")
    if "transcript" in session:
        t = session["transcript"]
        print(f"{'transcript:':12} {t['rows']} rows, {t['bytes']} bytes, last seq {t['last_seq']}")


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
