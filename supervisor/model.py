"""slotd's vocabulary: session statuses, transcript streams, times, the session on the wire.

A leaf: it imports nothing of slotd and nothing outside the standard library, so the
daemon, the store and slotctl all speak it, and slotctl loads neither apsw nor trio.
"""

from __future__ import annotations

import datetime
from enum import StrEnum
from typing import Any, NamedTuple


class Status(StrEnum):
    """A session's status (docs/protocol.md, "Statuses"), as the wire and the database spell it."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    WAITING_CHECKPOINT = "waiting_checkpoint"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"
    LOST = "lost"
    CANCELLED = "cancelled"


# In this order: store.py's SQL spells the ended ones out as its partial index does, and
# SQLite uses that index only for the same terms.
LIVE_STATUSES = (Status.RUNNING, Status.PAUSED, Status.WAITING_CHECKPOINT)
ENDED_STATUSES = (Status.COMPLETED, Status.FAILED, Status.KILLED, Status.LOST, Status.CANCELLED)
ALL_STATUSES = tuple(Status)


class Stream(StrEnum):
    """Where a transcript row comes from: the command's output, its input, or slotd."""

    STDOUT = "stdout"
    STDERR = "stderr"
    STDIN = "stdin"
    SYSTEM = "system"
    # A tty session's output: its terminal merges stdout and stderr into one stream, so
    # neither name would be true of it.
    TTY = "tty"


STREAMS = tuple(Stream)


# -- terminals: a tty session's window size -----------------------------------------


class TerminalSize(NamedTuple):
    """A terminal's window size, in character cells."""

    cols: int
    rows: int


# What a tty session gets when neither its client's terminal nor --size says.
DEFAULT_TERMINAL_SIZE = TerminalSize(80, 24)
# The widest and tallest window a session may ask for: far beyond any screen, and a
# bound on what a model of the screen may cost.
MAX_TERMINAL_SIDE = 1000


# -- times: ISO 8601 in UTC with microseconds on the wire and in the database --------


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def iso_from_unix(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="microseconds")


def unix_from_iso(text: str) -> float:
    """Parse an ISO 8601 time; a time without a zone is taken as UTC."""
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def duration_text(seconds: float) -> str:
    """A duration as people write it: 1.5s, 45s, 10m, 1h30m, 2d4h."""
    if seconds < 60:
        return f"{round(seconds, 1):g}s"
    parts = []
    rest = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


# -- CPU priority ------------------------------------------------------------------------

# A session's command runs at a nice value from 0 (the daemon's own, by default) to
# NICE_MAX, the least urgent: never more urgent than a daemon at its default, whatever
# a client asks.
NICE_MAX = 19
# The default (config's session_nice): the daemon, at 0, then weighs about nine times
# as much as a busy session when both want a core (CFS weights 1024 and 110).
SESSION_NICE_DEFAULT = 10


# The most slots a daemon runs sessions in (the config's `slots`, `slotctl slots N`).
MAX_SLOTS = 256


# -- limits -------------------------------------------------------------------------------

# The longest run time a session may be given (ten years: "no limit" is no timeout).
MAX_TIMEOUT = 10 * 365 * 86400
# The least memory limit: below it not even a shell starts, and the failure would say
# nothing of why.
MIN_MEMORY_LIMIT = 16 << 20
MAX_MEMORY_LIMIT = 1 << 60


# -- the session object on the wire ---------------------------------------------------

# Its fields, in this order: the stored session's fields that clients may use, as
# docs/protocol.md's table describes them. Where ingest has read the spool to
# (spool_dir, spool_segment, spool_offset) is the daemon's own and stays off the wire.
SESSION_FIELDS = (
    "id",
    "arrival",
    "argv",
    "cwd",
    "status",
    "queued_at",
    "priority",
    "nice",
    "slot",
    "env",
    "labels",
    "pid",
    "pid_create_time",
    "shim_pid",
    "shim_create_time",
    "boot_id",
    "exit_code",
    "signal",
    "reason",
    "stop_requested",
    "started_at",
    "ended_at",
    "transcript_bytes",
    "truncation_seq",
    "truncated_bytes",
    "pid_start_ticks",
    "shim_start_ticks",
    "tty",
    "tty_cols",
    "tty_rows",
    "timeout",
    "memory_limit",
    "stop_reason",
    "inherit_env",
    "restart_of",
)


class LiveState(NamedTuple):
    """What only the daemon's memory knows of a session (all None for one not live);
    `ps` and `show` add it to their session objects."""

    # A note while the session's shim waits for space on a full runtime disk.
    output_blocked: str | None = None


LIVE_FIELDS = LiveState._fields


def session_view(session: object, live: LiveState | None = None) -> dict[str, Any]:
    """The session object clients see: the stored session's SESSION_FIELDS, then, if
    given, its live state."""
    view = {name: getattr(session, name) for name in SESSION_FIELDS}
    if live is not None:
        view.update(live._asdict())
    return view
