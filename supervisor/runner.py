"""The session runner: give a session its slot and spawn its shim (or re-attach to one
found at start), follow its spool into the ingestor, record how it ended, free its slot.

Each live session has one task in the runner's nursery, from its start to its end.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

from supervisor import diskspace, fsguard, spool
from supervisor.config import Config
from supervisor.database import DatabaseWriter
from supervisor.ingest import Ingestor
from supervisor.linux import current_boot_id
from supervisor.live import LiveSession, LiveSessions, shim_blocked
from supervisor.model import unix_from_iso, utc_now
from supervisor.processes import ProcessRef, kill_process, signal_group
from supervisor.spawn import SHIM_LOG, last_words, remove_session_dir, shim_spec, spawn_shim
from supervisor.spoolevents import apply_event, apply_output, shim_columns
from supervisor.store import Session
from supervisor.tailing import tail_spool

log = structlog.get_logger()

# How long a request waits for its change to be committed before it replies anyway.
REPLY_COMMIT_WAIT = 2.0
# How often shims that exited after their session's task stopped waiting are reaped.
SHIM_REAP_INTERVAL = 1.0


async def commit_briefly(ingestor: Ingestor) -> None:
    """Let the reply show the change, but never hang a request on a full disk."""
    with trio.move_on_after(REPLY_COMMIT_WAIT):
        await ingestor.commit_now()


async def register(writer: DatabaseWriter, ingestor: Ingestor, session_id: str) -> None:
    """Number the session's next rows after its highest committed one."""
    if not ingestor.is_registered(session_id):
        ingestor.register(session_id, await writer.run(writer.store.last_seq, session_id))


class ShimReaper:
    """The shims this daemon spawned, waited for once they exit, so none stays a zombie."""

    def __init__(self) -> None:
        self._shims: dict[str, subprocess.Popen[bytes]] = {}

    def add(self, session_id: str, shim: subprocess.Popen[bytes]) -> None:
        self._shims[session_id] = shim

    async def reap(self, session_id: str) -> None:
        """The shim exits right after its last record: wait for it (a while)."""
        shim = self._shims.get(session_id)
        if shim is None:
            return
        with trio.move_on_after(5):
            # Our child, about to exit: a short poll is simpler than a pidfd here.
            while shim.poll() is None:  # noqa: ASYNC110
                await trio.sleep(0.01)
        if shim.returncode is not None:
            self._shims.pop(session_id, None)  # reap_finished may have been first

    def reap_finished(self) -> None:
        for session_id, shim in list(self._shims.items()):
            if shim.poll() is not None:
                self._shims.pop(session_id, None)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Reap, now and then, the shims that outlived reap's wait (a shim that waited
        for disk space to record its session's end, say)."""
        task_status.started()
        while True:
            await trio.sleep(SHIM_REAP_INTERVAL)
            self.reap_finished()


class SessionRunner:
    """Starts a session's shim, follows its spool to the end, and records how it ended."""

    def __init__(
        self, config: Config, writer: DatabaseWriter, ingestor: Ingestor, live: LiveSessions, session_umask: int = 0o022
    ) -> None:
        self.config = config
        self.writer = writer
        self.ingestor = ingestor
        self.live = live
        # The daemon's own files are private (umask 077); a session's are its own business.
        self.session_umask = session_umask
        self.checkpoint_regex = config.checkpoint_regex
        self.boot_id = current_boot_id()
        self.shims = ShimReaper()
        # Called with each session once it is live (started, or re-attached after a
        # restart): the controls stop it at its deadline.
        self.on_live: Callable[[LiveSession], None] = lambda live: None
        self._sessions_fd: int | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Hold every session's task (and the shim reaper) for the daemon's life."""
        # Held for the daemon's life: every session directory is made relative to it.
        self._sessions_fd = fsguard.open_dir(self.config.sessions_dir)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.shims.run)
                task_status.started()
        finally:
            os.close(self._sessions_fd)
            self._sessions_fd = None

    async def start(self, session: Session, slot: int) -> str | None:
        """Give a queued session a slot and spawn its shim.

        Returns None, or, when the runtime disk has no room for the session's files,
        what to tell the client who is waiting for it (the session is failed then).
        """
        if session.id in self.live:
            return None  # already being started (by the dispatcher, or a start with queue=false)
        spool_dir = self.config.sessions_dir / session.id
        live = LiveSession(session.id, slot, "running", spool_dir)
        if session.timeout is not None:
            live.timeout, live.deadline = session.timeout, time.time() + session.timeout
        self.live.add(live)  # reserves the slot before the first await
        try:
            started = await self.writer.run(
                self.writer.store.transition,
                session.id,
                ("queued",),
                status="running",
                slot=slot,
                started_at=utc_now(),
                spool_dir=str(spool_dir),
                boot_id=self.boot_id,
                spool_segment=0,
                spool_offset=0,
            )
        except BaseException:
            self.live.remove(session.id)
            raise
        if started is None:  # cancelled meanwhile
            self.live.remove(session.id)
            return None
        if self.live.closed:
            # Shutdown with mode stop began while this start waited: do not start it.
            await self.writer.run(
                self.writer.store.transition,
                session.id,
                ("running",),
                status="queued",
                slot=None,
                started_at=None,
                spool_dir=None,
            )
            self.live.remove(session.id)
            return None
        await register(self.writer, self.ingestor, session.id)
        try:
            assert self._sessions_fd is not None
            shim = spawn_shim(self._sessions_fd, spool_dir, shim_spec(self.config, session, slot), self.session_umask)
        except (OSError, fsguard.PathError) as error:
            return await self._fail_start(live, error)
        live.shim = ProcessRef.of(shim.pid)
        self.shims.add(session.id, shim)
        self.ingestor.append(session.id, "system", f"started in slot {slot}\n".encode())
        self.ingestor.update(session.id, **shim_columns(live.shim, shim.pid))
        log.info("session_started", session_id=session.id, slot=slot, argv=session.argv, shim_pid=shim.pid)
        assert self._nursery is not None
        self._nursery.start_soon(self._supervise, live, spool.Position(0, 0))
        self.on_live(live)
        return None

    async def _fail_start(self, live: LiveSession, error: OSError | fsguard.PathError) -> str | None:
        """Record a session whose shim could not be started as failed, and free its slot.

        Returns what to tell a waiting client when the runtime disk is full (None
        otherwise: the session's reply says failed, with the reason). Like systemd with
        a runtime directory it cannot set up, and pueue with a task it cannot spawn, the
        session is failed, not queued again: it must not start later, unseen, after its
        client was told it did not.
        """
        no_space = isinstance(error, OSError) and diskspace.is_no_space(error)
        why = (
            f"no space left in {self.config.sessions_dir}"
            if no_space
            else getattr(error, "strerror", None) or str(error)
        )
        log.error("shim_spawn_failed", session_id=live.id, slot=live.slot, error=str(error))
        self.ingestor.append(live.id, "system", f"could not start the shim: {why if no_space else error}\n".encode())
        self.ingestor.update(
            live.id,
            status="failed",
            slot=None,
            ended_at=utc_now(),
            reason=f"could not start shim: {why}",
            spool_dir=None,
        )
        live.decide_end("failed")
        assert self._sessions_fd is not None
        try:
            # Nothing in it is needed, and on a full disk its pages are wanted back.
            remove_session_dir(self._sessions_fd, live.id)
        except OSError as cleanup_error:
            log.warning("session_dir_not_removed", session_id=live.id, error=str(cleanup_error))
        # Not _finish: where the database shares the full disk, its commit waits for
        # room, and the client must hear now.
        await commit_briefly(self.ingestor)
        await self._release(live)
        return f"session {live.id} not started: {why} (recorded as failed)" if no_space else None

    async def attach(
        self, session: Session, shim: ProcessRef | None, command: ProcessRef | None, note: str
    ) -> LiveSession:
        """Re-attach a session found live at start: resume its spool at the committed offset.

        shim and command come from reconcile's identity checks (None when not running):
        an unverified PID is never signalled.
        """
        assert session.slot is not None and session.spool_dir is not None
        live = LiveSession(session.id, session.slot, session.status, Path(session.spool_dir))
        live.shim, live.command = shim, command
        live.stop_requested = session.stop_requested
        live.stop_reason = session.stop_reason
        if session.timeout is not None and session.started_at is not None:
            live.timeout, live.deadline = session.timeout, unix_from_iso(session.started_at) + session.timeout
        if session.pid is not None:
            live.started.set()
        self.live.add(live)
        await register(self.writer, self.ingestor, session.id)
        self.ingestor.replay(session.id)  # so this note takes no number a follower saw
        self.ingestor.append(session.id, "system", f"{note}\n".encode())
        assert self._nursery is not None
        position = spool.Position(session.spool_segment, session.spool_offset)
        # Segments committed whole before a crash may still be there: a shim waiting
        # for room in its spool must get it.
        spool.delete_segments_before(live.spool_dir, position.segment)
        self._nursery.start_soon(self._supervise, live, position)
        self.on_live(live)
        return live

    async def _supervise(self, live: LiveSession, position: spool.Position) -> None:
        """Follow the session's spool to its last record, then record its end."""
        bound = log.bind(session_id=live.id, slot=live.slot)
        reason = None
        try:
            final = await tail_spool(
                live.id,
                live.spool_dir,
                position,
                live.shim.pid if live.shim is not None else None,
                self.ingestor,
                on_event=lambda record, end: apply_event(self.ingestor, live, record, end),
                on_output=lambda data: apply_output(self.ingestor, self.checkpoint_regex, live, data),
            )
            if final is None:
                reason = "shim ended without recording an exit status"
                if said := last_words(live.spool_dir / SHIM_LOG):
                    reason += f" (it said: {said})"
        except spool.CorruptSpool as error:
            # Not a daemon bug to crash (and crash again) on: this session's record is
            # damaged past its last good record; everything before it is kept.
            reason = f"its spool is damaged ({error})"
        except Exception as error:
            # Whatever else breaks the watch of one session (a file limit, a bug) must
            # not end the daemon, nor leave the session running unseen: account for it.
            bound.exception("session_watch_failed")
            reason = f"slotd could not follow it ({type(error).__name__}: {error})"
        finally:
            # A tail that stopped short of its replay's end: what waited for it goes now.
            self.ingestor.replayed(live.id)
            # A shim still running here is left to the next daemon on purpose
            # (shutdown with on_shutdown = "keep"); reap the ones that have ended.
            self.shims.reap_finished()
        if reason is not None:
            # Its end is decided: no status may change after it, and whoever waits for
            # the command to start (a stop, a kill) must not wait for what never will.
            live.decide_end("lost")
            live.started.set()
            bound.warning("session_lost", reason=reason)
            # No process of a lost session may run on unseen: end its group and its shim.
            signal_group(live.command, signal.SIGKILL)
            kill_process(live.shim)
            self.ingestor.append(live.id, "system", f"lost: {reason}\n".encode())
            self.ingestor.update(live.id, status="lost", slot=None, ended_at=utc_now(), reason=reason)
        await self.shims.reap(live.id)
        await self._finish(live)

    async def _finish(self, live: LiveSession) -> None:
        """Commit the session's end, free its slot and start the next queued one."""
        self.ingestor.update(live.id, spool_dir=None)  # removed below: everything is ingested
        await self.ingestor.commit_now()
        await self._release(live)

    async def _release(self, live: LiveSession) -> None:
        """Free an ended session's slot, spool and numbering; start the next queued one."""
        live.started.set()  # however it ended (a shim that could not spawn): stop waiting
        self.live.remove(live.id)
        live.ended.set()
        if self.writer.store.file_problem() is None:  # else committed into a lost file: keep the spool
            # Up to spool_max_bytes of segments: not on the event loop.
            await trio.to_thread.run_sync(functools.partial(shutil.rmtree, live.spool_dir, ignore_errors=True))
        self.ingestor.forget(live.id)
        self.live.wake_dispatch()

    def note_blocked_spools(self) -> None:
        """Mark the live sessions whose shim waits for disk space, and unmark the rest.

        The shim says so by its process name (see Shim.on_spool_blocked): reading it
        needs no disk, and a daemon started meanwhile reads it the same way.
        """
        runtime_dir = self.config.runtime_dir
        for live in self.live:
            blocked = shim_blocked(live)
            if blocked == (live.output_blocked is not None):
                continue
            bound = log.bind(session_id=live.id, slot=live.slot)
            if blocked:
                live.output_blocked = f"no space left in {runtime_dir} since {utc_now()}"
                bound.warning(
                    "spool_blocked", runtime_dir=str(runtime_dir), free_bytes=diskspace.free_bytes(runtime_dir)
                )
                self.ingestor.append(live.id, "system", b"output waits: no space left for its spool\n")
            else:
                live.output_blocked = None
                bound.info("spool_unblocked")
                self.ingestor.append(live.id, "system", b"output resumes: its spool has room again\n")
