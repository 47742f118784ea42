"""What the store holds, as Python values: a session's row, transcript rows and the
batches ingest commits (the statuses and streams are model.py's). No SQL runs here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from supervisor import jsonlimits
from supervisor.errors import DamagedRow
from supervisor.model import ENDED_STATUSES

log = structlog.get_logger()


@dataclass(frozen=True)
class Session:
    """A session's row as stored (the wire view is model.session_view)."""

    id: str
    arrival: int
    argv: list[str]
    cwd: str
    status: str
    queued_at: str
    priority: int = 0
    # None only for sessions recorded before slotd set a nice value (they ran at the daemon's).
    nice: int | None = None
    slot: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    pid_create_time: float | None = None
    shim_pid: int | None = None
    shim_create_time: float | None = None
    boot_id: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    stop_requested: bool = False
    started_at: str | None = None
    ended_at: str | None = None
    spool_dir: str | None = None
    spool_segment: int = 0
    spool_offset: int = 0
    transcript_bytes: int = 0
    truncation_seq: int | None = None
    truncated_bytes: int = 0
    pid_start_ticks: int | None = None
    shim_start_ticks: int | None = None
    tty: bool = False  # runs on a pseudo-terminal, of tty_cols x tty_rows
    tty_cols: int | None = None
    tty_rows: int | None = None
    timeout: float | None = None  # seconds it may run before it is stopped
    memory_limit: int | None = None  # bytes of address space per process (RLIMIT_AS)
    stop_reason: str | None = None  # why it was stopped: on request, or its timeout
    inherit_env: bool = True  # its environment is the daemon's with env on top, else env alone
    # The id of the session this one repeats (`restart`), which may since be deleted.
    restart_of: str | None = None

    @property
    def is_ended(self) -> bool:
        return self.status in ENDED_STATUSES


_SESSION_FIELDS = [f.name for f in dataclasses.fields(Session)]
_JSON_FIELDS = {"argv", "env", "labels"}
_BOOL_FIELDS = {"stop_requested", "tty", "inherit_env"}  # stored as 0 or 1
_SESSION_COLUMNS = ", ".join(_SESSION_FIELDS)
_TEXT_FIELDS = {
    "id",
    "status",
    "argv",
    "cwd",
    "env",
    "labels",
    "boot_id",
    "reason",
    "queued_at",
    "started_at",
    "ended_at",
    "spool_dir",
    "stop_reason",
    "restart_of",
}
# Text is read as bytes and decoded in _session_from_row: bytes that are not UTF-8 then
# damage their own row only, not every query that meets them (apsw would raise there).
_SELECT_COLUMNS = ", ".join(f"CAST({name} AS BLOB)" if name in _TEXT_FIELDS else name for name in _SESSION_FIELDS)


def _session_from_row(row: Sequence[Any]) -> Session:
    values = dict(zip(_SESSION_FIELDS, row, strict=True))
    raw_id = values["id"]
    session_id = raw_id.decode(errors="replace") if isinstance(raw_id, bytes) else str(raw_id)
    for name, value in values.items():
        if isinstance(value, bytes) and name in _TEXT_FIELDS:
            try:
                values[name] = value = value.decode()
            except UnicodeDecodeError as error:
                raise DamagedRow(session_id, name, f"is not UTF-8 text ({error})") from None
        if name in _JSON_FIELDS:
            try:
                # As strict as the wire: what is read here goes out in replies.
                values[name] = jsonlimits.loads(value)
            except (TypeError, ValueError) as error:
                raise DamagedRow(session_id, name, f"is not valid JSON ({error})") from None
        elif not (
            value is None or isinstance(value, (int, str)) or (isinstance(value, float) and math.isfinite(value))
        ):
            raise DamagedRow(session_id, name, f"holds {type(value).__name__} {str(value)[:40]}, not text or a number")
    for name in _BOOL_FIELDS:
        values[name] = bool(values[name])
    return Session(**values)


def _sessions_from_rows(rows: Iterable[Sequence[Any]]) -> list[Session]:
    """Sessions from rows, leaving out (and logging) damaged ones: one bad row must not
    hide every other session from `ps` or the queue."""
    sessions = []
    for row in rows:
        try:
            sessions.append(_session_from_row(row))
        except DamagedRow as error:
            log.error("damaged_session_row_left_out", session_id=error.session_id, error=str(error))
    return sessions


def _to_column(name: str, value: Any) -> Any:
    if name in _JSON_FIELDS:
        return json.dumps(value)
    if name in _BOOL_FIELDS:
        return int(bool(value))
    return value


@dataclass(frozen=True, slots=True)
class Row:
    """One transcript row."""

    session_id: str
    seq: int
    ts: float
    stream: str
    data: bytes


# What a row held in a batch costs in memory besides its data: the Row, its seq and ts
# objects, the bytes object's header and its slot in the list (~170 bytes measured on
# CPython 3.11). Batches are capped on data plus this, so tiny rows cannot make a batch
# of a few MiB of data take hundreds of MiB.
ROW_OVERHEAD = 170


def row_cost(data: bytes) -> int:
    """The memory a row holding data takes in a batch, as counted against its cap."""
    return len(data) + ROW_OVERHEAD


@dataclass
class Batch:
    """Everything one flush commits in one transaction."""

    rows: list[Row] = field(default_factory=list)
    # session id -> (segment, offset) reached in its spool
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)
    # session id -> columns to set, applied after the rows
    updates: dict[str, dict[str, Any]] = field(default_factory=dict)
    # bytes of transcript data in the rows
    size: int = 0
    # session id -> bytes of its rows' data in this batch
    session_bytes: dict[str, int] = field(default_factory=dict)
    # session id -> what its rows take in memory (row_cost)
    session_cost: dict[str, int] = field(default_factory=dict)

    @property
    def cost(self) -> int:
        """What all the rows take in memory (row_cost), as counted against the cap."""
        return self.size + ROW_OVERHEAD * len(self.rows)

    def add_row(self, row: Row) -> None:
        self.rows.append(row)
        self.size += len(row.data)
        self.session_bytes[row.session_id] = self.session_bytes.get(row.session_id, 0) + len(row.data)
        self.session_cost[row.session_id] = self.session_cost.get(row.session_id, 0) + row_cost(row.data)

    def touched(self) -> set[str]:
        """Every session this batch changes."""
        return {*self.session_bytes, *self.positions, *self.updates}

    def extend(self, newer: Batch) -> None:
        """Append a later batch to this one (keeping this one's changes first)."""
        for row in newer.rows:
            self.add_row(row)
        self.positions.update(newer.positions)
        for session_id, columns in newer.updates.items():
            self.update(session_id, **columns)

    def update(self, session_id: str, **columns: Any) -> None:
        self.updates.setdefault(session_id, {}).update(columns)

    def __bool__(self) -> bool:
        return bool(self.rows or self.positions or self.updates)
