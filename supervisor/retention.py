"""Retention, on by default: a byte cap per transcript, a max age for ended sessions,
and a budget for the whole database. Runs from the daemon's maintenance task, through
the writer, so it never races ingest.
"""

from __future__ import annotations

import functools
import time

import structlog

from supervisor.config import Retention
from supervisor.database import DatabaseWriter, ReaderPool
from supervisor.model import ENDED_STATUSES, iso_from_unix
from supervisor.store import trimming

log = structlog.get_logger()


def truncation_marker(dropped_bytes: int, cap: int) -> bytes:
    """The system row that stands where retention dropped the middle of a transcript."""
    return f"transcript truncated: {dropped_bytes} bytes dropped here to keep it under {cap} bytes (retention.max_session_bytes)\n".encode()


async def enforce_session_cap(writer: DatabaseWriter, readers: ReaderPool, retention: Retention) -> None:
    """Truncate the middle of every transcript over max_session_bytes."""
    cap = retention.max_session_bytes
    if not cap:
        return
    # Down to 90 % of the cap: a session writing on is truncated again only after
    # another tenth of the cap, not at every tick.
    target = cap * 9 // 10
    for session_id in await writer.run(trimming.sessions_over_cap, writer.store, cap):
        plan = await readers.run(trimming.truncation_plan, session_id, cap, target)
        if plan is None:
            continue
        total = 0
        # In slices, each its own call: commits of live output get their turns between.
        marker_text = functools.partial(truncation_marker, cap=cap)
        while dropped := await writer.run(trimming.drop_middle_rows, writer.store, session_id, *plan, marker_text):
            total += dropped
        if total:
            log.info("transcript_truncated", session_id=session_id, dropped_bytes=total, cap=cap)


async def enforce_age_and_budget(writer: DatabaseWriter, retention: Retention) -> list[str]:
    """Delete ended sessions past max_age_days, then the oldest while over max_db_bytes."""
    deleted: list[str] = []
    if retention.max_age_days:
        cutoff = iso_from_unix(time.time() - retention.max_age_days * 86400)
        deleted += await writer.run(writer.store.prune, cutoff, ENDED_STATUSES)
    if retention.max_db_bytes:
        while await writer.run(trimming.used_bytes, writer.store) > retention.max_db_bytes:
            # One at a time, oldest first: delete no more than the budget needs.
            oldest = await writer.run(trimming.oldest_ended, writer.store, 1)
            if not oldest:
                break  # only live or queued sessions left: nothing more may go
            await writer.run(writer.store.delete_session, oldest[0])
            deleted += oldest
    if deleted:
        log.info("sessions_pruned", count=len(deleted))
    return deleted
