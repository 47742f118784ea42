"""Reconcile on start: every session recorded as live is checked against the processes.

A recorded PID is ours only if the process exists and its start time, in clock ticks
since boot, is the one recorded (PIDs are reused; the ticks do not move when the clock
is stepped). A changed boot id means the machine rebooted and nothing recorded can
still be running. Alive: re-attach at the committed spool offset. Ended while the daemon
was down: ingest the rest of its spool, exit status included. Neither: lost, with the
reason. Each decision is a system row in the session's transcript and a log line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import structlog
import trio

from supervisor import fsguard, spool
from supervisor.config import Config
from supervisor.database import DatabaseWriter
from supervisor.ingest import Ingestor
from supervisor.linux import current_boot_id
from supervisor.live import LiveSession
from supervisor.model import LIVE_STATUSES, utc_now
from supervisor.processes import ProcessRef, alive, find_shim, kill_process, signal_group
from supervisor.runner import register
from supervisor.slots import SlotManager
from supervisor.spoolevents import shim_columns
from supervisor.store import Session

log = structlog.get_logger()


def spool_is_empty(spool_dir: Path) -> bool:
    """No record was ever written: the shim never ran far enough to start the command."""
    return all(spool.segment_path(spool_dir, n).stat().st_size == 0 for n in spool.list_segments(spool_dir))


def distrust(spool_dir: Path, expected: Path) -> str | None:
    """Why a recorded spool directory cannot be trusted, or None if it can: it must be
    the session's own under sessions/ (a row edited to name another directory would
    have it read, then removed), and a directory (not a link) of ours, writable by
    nobody else, as the shim checks it."""
    if os.path.realpath(spool_dir) != os.path.realpath(expected):
        return f"{spool_dir} is not where slotd keeps its spool ({expected})"
    try:
        real, missing = fsguard.walk(spool_dir.parent)
        if missing:
            return f"{spool_dir.parent} does not exist"
        os.close(fsguard.open_dir(real / spool_dir.name))
    except fsguard.PathError as error:
        return str(error)
    except OSError as error:
        return f"cannot open {spool_dir}: {error.strerror}"
    return None


def locate_shim(session: Session, spool_dir: Path) -> ProcessRef | None:
    """The session's shim if it still runs: by its recorded PID and start ticks, or, when
    the daemon died before recording it, by its command line."""
    if session.shim_pid is not None:
        shim = ProcessRef.recorded(session.shim_pid, session.shim_start_ticks, session.shim_create_time)
        return shim if alive(shim) else None
    return find_shim(spool_dir)


def spool_writer(spool_dir: Path) -> ProcessRef | None:
    """A process still running for this spool: its shim (found by its command line), or
    the command its START record names (a shim SIGKILLed leaves its command running)."""
    shim = find_shim(spool_dir)
    if shim is not None:
        return shim
    segments = spool.list_segments(spool_dir)
    if not segments or segments[0] != 0:
        return None  # START is the first record; rotated away with segment 0
    reader = spool.SpoolReader(spool_dir, spool.Position(0, 0))
    try:
        records = reader.read(64 * 1024)
    except (OSError, spool.CorruptSpool):
        return None
    finally:
        reader.close()
    for record, _ in records:
        if record.kind == spool.START:
            try:
                start = json.loads(record.data)
                command = ProcessRef.recorded(start["pid"], start["start_ticks"])
            except (ValueError, KeyError, TypeError):
                return None
            return command if alive(command) else None
    return None


async def reconcile(
    config: Config, writer: DatabaseWriter, ingestor: Ingestor, slots: SlotManager, wait_for_ended: float = 30.0
) -> dict[str, int]:
    """Decide the fate of every session recorded as live; return counts by decision."""
    return await Reconciler(config, writer, ingestor, slots).reconcile(wait_for_ended)


class Reconciler:
    """Decides each session's fate, records it through the ingestor, and hands the
    sessions still to be followed to the slot manager's runner."""

    def __init__(self, config: Config, writer: DatabaseWriter, ingestor: Ingestor, slots: SlotManager) -> None:
        self.config = config
        self.writer = writer
        self.ingestor = ingestor
        self.slots = slots

    async def reconcile(self, wait_for_ended: float) -> dict[str, int]:
        sessions = await self.writer.run(self.writer.store.sessions_with_status, LIVE_STATUSES)
        boot_id = current_boot_id()
        counts = {"reattached": 0, "ended_while_down": 0, "lost": 0, "requeued": 0}
        finishing: list[LiveSession] = []
        for session in sessions:
            decision, live = await self.reconcile_one(session, boot_id)
            counts[decision] += 1
            if decision == "ended_while_down" and live is not None:
                finishing.append(live)
        self.remove_stray_spools()
        # Sessions that ended while the daemon was down are settled before READY: their
        # spools are finite, and `ps` right after start should tell the truth. (Bounded: a
        # full disk must not keep the daemon from answering.)
        with trio.move_on_after(wait_for_ended):
            await self.ingestor.commit_now()
            for live in finishing:
                await live.ended.wait()
        return counts

    async def reconcile_one(self, session: Session, boot_id: str | None) -> tuple[str, LiveSession | None]:
        """Decide one session's fate; return the decision and, if attached, its live record."""
        if session.boot_id and boot_id and session.boot_id != boot_id:
            await self.mark_lost(session, "machine rebooted")
            return "lost", None
        command = ProcessRef.recorded(session.pid, session.pid_start_ticks, session.pid_create_time)
        spool_dir = Path(session.spool_dir) if session.spool_dir else None
        # One lstat per session, once at start: not worth a thread.
        if spool_dir is None or not os.path.lexists(spool_dir):  # noqa: ASYNC240
            if session.shim_pid is None:
                await self.requeue(session)
                return "requeued", None
            return await self.give_up(session, command, "its spool directory is gone")
        if (why := distrust(spool_dir, self.config.sessions_dir / session.id)) is not None:
            # Another user could have written what is there: none of it is ingested.
            return await self.give_up(session, command, f"its spool directory is not trusted: {why}")
        shim = locate_shim(session, spool_dir)
        if shim is None and session.shim_pid is None and spool_is_empty(spool_dir):
            await self.requeue(session)
            return "requeued", None
        command = command if alive(command) else None
        if shim is not None:
            if session.shim_pid is None:
                self.ingestor.update(session.id, **shim_columns(shim, shim.pid))
            decision, note = "reattached", "re-attached after restart"
        else:
            decision, note = "ended_while_down", "daemon restarted: the shim had ended; reading the rest of its spool"
        live = await self.slots.runner.attach(session, shim, command, note)
        if live.stop_requested and shim is not None:
            # A stop was under way when the daemon went: its SIGKILL must still follow.
            self.slots.controls.continue_stop(live, self.config.stop_timeout)
        log.info(
            "session_reconciled",
            session_id=session.id,
            slot=session.slot,
            decision=decision,
            shim_alive=shim is not None,
            command_alive=command is not None,
        )
        return decision, live

    async def mark_lost(self, session: Session, reason: str) -> None:
        await register(self.writer, self.ingestor, session.id)
        self.ingestor.append(session.id, "system", f"lost: {reason}\n".encode())
        self.ingestor.update(session.id, status="lost", slot=None, ended_at=utc_now(), reason=reason, spool_dir=None)
        log.warning("session_lost", session_id=session.id, slot=session.slot, reason=reason)

    async def requeue(self, session: Session) -> None:
        await register(self.writer, self.ingestor, session.id)
        self.ingestor.append(session.id, "system", b"requeued: the daemon stopped before the session started\n")
        self.ingestor.update(session.id, status="queued", slot=None, started_at=None, spool_dir=None, boot_id=None)
        log.info("session_requeued", session_id=session.id, slot=session.slot)

    async def give_up(self, session: Session, command: ProcessRef | None, reason: str) -> tuple[str, None]:
        """Without a spool to read nothing of it can be ingested: end what still runs of it."""
        signal_group(command, signal.SIGKILL)
        kill_process(ProcessRef.recorded(session.shim_pid, session.shim_start_ticks, session.shim_create_time))
        await self.mark_lost(session, reason)
        return "lost", None

    def remove_stray_spools(self) -> None:
        """Spool directories of sessions no longer live (lost at a reboot, or ended just
        before a crash) hold nothing still needed: remove them. Not one a process still
        writes to (its session's row lost or rewritten behind our back), and nothing at all
        while the database is not the file opened: then no row says what is stray."""
        sessions_dir = self.config.sessions_dir
        if (problem := self.writer.store.file_problem()) is not None:
            log.error("stray_spools_kept", problem=problem)
            return
        for entry in sessions_dir.iterdir() if sessions_dir.is_dir() else []:
            if entry.name in self.slots.live:
                continue
            if (writer := spool_writer(entry)) is not None:
                log.warning(
                    "stray_spool_kept", session_id=entry.name, pid=writer.pid, reason="a process still writes to it"
                )
                continue
            shutil.rmtree(entry, ignore_errors=True)
            log.info("stray_spool_removed", session_id=entry.name)
