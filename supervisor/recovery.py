"""Reconcile on start: every session recorded as live is checked against the processes.

A recorded PID is ours only if the process exists and its create time matches the one
recorded (PIDs are reused); a changed boot id means the machine rebooted and nothing
recorded can still be running. Alive: re-attach at the committed spool offset. Ended
while the daemon was down: ingest the rest of its spool, exit status included. Neither:
lost, with the reason.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import structlog
import trio

from supervisor.slots import SlotManager, current_boot_id
from supervisor.store import LIVE_STATUSES, Session, utc_now

log = structlog.get_logger()

# Create times are floats computed from clock ticks; allow for rounding, not more.
CREATE_TIME_TOLERANCE = 0.05


def same_process(pid: int | None, create_time: float | None) -> bool:
    """True when pid is the very process that was recorded, not a reuse of its number."""
    if pid is None or create_time is None:
        return False
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - create_time) <= CREATE_TIME_TOLERANCE and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


async def mark_lost(slots: SlotManager, session: Session, reason: str) -> None:
    last_seq = await slots.writer.run(slots.store.last_seq, session.id)
    slots.ingestor.register(session.id, last_seq)
    slots.ingestor.append(session.id, "system", f"lost: {reason}\n".encode())
    slots.ingestor.update(session.id, status="lost", slot=None, ended_at=utc_now(), reason=reason)
    log.warning("session_lost", session_id=session.id, slot=session.slot, reason=reason)


async def requeue(slots: SlotManager, session: Session) -> None:
    last_seq = await slots.writer.run(slots.store.last_seq, session.id)
    slots.ingestor.register(session.id, last_seq)
    slots.ingestor.append(session.id, "system", b"requeued: the daemon stopped before the session started\n")
    slots.ingestor.update(session.id, status="queued", slot=None, started_at=None, spool_dir=None)
    log.info("session_requeued", session_id=session.id)


async def reconcile(slots: SlotManager, wait_for_ended: float = 30.0) -> dict[str, int]:
    """Decide the fate of every session recorded as live; return counts by decision."""
    sessions = await slots.writer.run(slots.store.sessions_with_status, LIVE_STATUSES)
    boot_id = current_boot_id()
    counts = {"reattached": 0, "ended_while_down": 0, "lost": 0, "requeued": 0}
    finishing = []
    for session in sessions:
        if session.boot_id and boot_id and session.boot_id != boot_id:
            await mark_lost(slots, session, "machine rebooted")
            counts["lost"] += 1
            continue
        spool_exists = session.spool_dir is not None and Path(session.spool_dir).is_dir()
        shim_alive = same_process(session.shim_pid, session.shim_create_time)
        if not spool_exists:
            if session.shim_pid is None:
                await requeue(slots, session)
                counts["requeued"] += 1
            else:
                await mark_lost(slots, session, "its spool is gone")
                counts["lost"] += 1
            continue
        command_alive = same_process(session.pid, session.pid_create_time)
        if shim_alive:
            note = "re-attached after restart"
            counts["reattached"] += 1
        else:
            note = "daemon restarted: the session's shim had ended; reading the rest of its spool"
            counts["ended_while_down"] += 1
        live = await slots.attach(session, session.shim_pid if shim_alive else None, command_alive, note)
        log.info("session_reconciled", session_id=session.id, slot=session.slot, shim_alive=shim_alive, command_alive=command_alive)
        if not shim_alive:
            finishing.append(live)
    await slots.ingestor.commit_now()
    # Sessions that ended while the daemon was down are settled before READY.
    with trio.move_on_after(wait_for_ended):
        for live in finishing:
            await live.ended.wait()
    return counts
