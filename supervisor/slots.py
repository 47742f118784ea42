"""Slots and the queue: starting, watching and stopping sessions.

At most `slots` sessions are live (running, paused or waiting_checkpoint) at once, each
in the lowest free slot; the rest wait in the queue (stored in the database, so it
survives restarts) by priority, then arrival. Each live session has one task in this
manager's nursery: it spawns the shim (or re-attaches to one), tails its spool into the
ingestor, and records how it ended.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import trio

from supervisor import diskspace, fsguard, linux, spool
from supervisor.config import Config
from supervisor.database import DatabaseWriter
from supervisor.ingest import Ingestor
from supervisor.linux import current_boot_id
from supervisor.model import LIVE_STATUSES, iso_from_unix, utc_now
from supervisor.processes import ProcessRef, alive, kill_process, signal_group
from supervisor.protocol import EXITED_WHILE_BLOCKED, ErrorCode, RequestError
from supervisor.stdin import InputClosed, InputWriter
from supervisor.store import Session
from supervisor.tailing import tail_spool

log = structlog.get_logger()

# Signals after which a session that ends is recorded as killed, not failed.
# (SIGINT, SIGHUP and the like may be handled and survived: a session that later exits
# on its own is not "killed".)
TERMINATING_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL})
# How long `send` waits for a session that does not read its input.
SEND_TIMEOUT = 30.0
# How long a request waits for its change to be committed before it replies anyway.
REPLY_COMMIT_WAIT = 2.0
# How often a stop looks whether a blocked session's command is gone (/proc).
GONE_POLL_INTERVAL = 0.05
# How much of the latest output the checkpoint pattern looks at.
CHECKPOINT_WINDOW = 4096
# The shim's stdout and stderr, in its session directory: its own words if it refuses.
SHIM_LOG = "shim.log"
# Disk space held for the shim's first spool record (START or SPAWN_FAILED, a few
# hundred bytes): one page, the least a filesystem allocates.
FIRST_RECORD_ROOM = 4096


def make_session_dir(sessions_fd: int, name: str, spec: dict) -> int:
    """Create a session's directory, its spec, its input FIFO and its first spool
    segment, all new and private, relative to the held sessions/ descriptor; return the
    shim log's descriptor.

    Nothing here follows a name: whatever an earlier run left under this name is
    removed first (a link as a link), the directory is opened without following one,
    and every file in it is created with O_EXCL.
    """
    remove_session_dir(sessions_fd, name)
    os.mkdir(name, 0o700, dir_fd=sessions_fd)
    dir_fd = fsguard.open_dir(name, dir_fd=sessions_fd)
    try:
        with open(fsguard.create_file(spool.SPEC_FILE, dir_fd), "w") as spec_file:
            spec_file.write(json.dumps(spec))
        os.mkfifo(spool.STDIN_FIFO, 0o600, dir_fd=dir_fd)
        segment = fsguard.create_file(spool.segment_name(0), dir_fd)
        try:
            # The shim records that it started the command (or why it could not) before
            # anything else. That record must find room: a full disk is a clear refusal
            # here, before the command runs, not a command running unrecorded while its
            # shim waits for room to say so.
            diskspace.reserve(segment, FIRST_RECORD_ROOM)
        finally:
            os.close(segment)
        return fsguard.create_file(SHIM_LOG, dir_fd)
    finally:
        os.close(dir_fd)


def remove_session_dir(sessions_fd: int, name: str) -> None:
    """Remove whatever is under a session's name (a link as a link), if anything."""
    try:
        is_dir = stat.S_ISDIR(os.lstat(name, dir_fd=sessions_fd).st_mode)
    except FileNotFoundError:
        return
    if is_dir:
        shutil.rmtree(name, dir_fd=sessions_fd)
    else:
        os.unlink(name, dir_fd=sessions_fd)


def last_words(path: Path) -> str | None:
    """The last line a shim wrote to its log, if any (why it refused to run)."""
    try:
        with open(path, "rb") as log_file:
            log_file.seek(max(0, os.fstat(log_file.fileno()).st_size - 1024))
            lines = log_file.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return None
    return lines[-1] if lines else None


def shim_blocked(live: LiveSession) -> bool:
    """The session's shim waits for disk space (it says so by its name, see
    Shim.on_spool_blocked: reading it needs no disk)."""
    shim = live.shim
    return shim is not None and linux.process_name(shim.pid) == spool.NO_SPACE_NAME and shim.alive()


def ended_or_gone(live: LiveSession) -> bool:
    """Its end is recorded, or its command is gone while its shim waits for disk space
    to record that end (it is then recorded once there is room)."""
    return live.ended.is_set() or (live.command_gone() and shim_blocked(live))


async def wait_ended_or_gone(live: LiveSession) -> None:
    while not ended_or_gone(live):
        with trio.move_on_after(GONE_POLL_INTERVAL):
            await live.ended.wait()


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on path's filesystem (None if unknown)."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def shim_columns(shim: ProcessRef | None, pid: int) -> dict:
    """What the database records of a shim: PID, start ticks, and create time for people."""
    return {
        "shim_pid": pid,
        "shim_start_ticks": shim.start_ticks if shim else None,
        "shim_create_time": shim.create_time() if shim else None,
    }


def command_columns(command: ProcessRef | None, pid: int) -> dict:
    return {
        "pid": pid,
        "pid_start_ticks": command.start_ticks if command else None,
        "pid_create_time": command.create_time() if command else None,
    }


def describe_exit(exit_code: int | None, signum: int | None) -> str:
    if signum is not None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"killed by {name}"
    return f"exit code {exit_code}"


@dataclass
class LiveSession:
    """What the daemon knows of a live session beyond its database row."""

    id: str
    slot: int
    status: str
    spool_dir: Path
    shim: ProcessRef | None = None
    command: ProcessRef | None = None  # the command, leader of the session's group
    stop_requested: bool = False
    # Set once the exit (or a failed start) is read: no status may change after it.
    final: bool = False
    # Set once the command has started, or once it is known that it never will.
    started: trio.Event = field(default_factory=trio.Event)
    ended: trio.Event = field(default_factory=trio.Event)
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    # Set while its shim waits for space on the runtime directory's disk: where, and
    # since when (its output waits in the command's pipe meanwhile).
    output_blocked: str | None = None

    def command_gone(self) -> bool:
        """Its command started and has ended (a command that ended while the daemon was
        down is not even known by its process: command is None then)."""
        return self.started.is_set() and not alive(self.command)

    def output_note(self) -> str | None:
        """What `ps`, `show` and `info` say of its output: None, or why it waits, and
        whether its command has exited meanwhile (its exit status then waits too)."""
        if self.output_blocked is None:
            return None
        if self.command_gone():
            return f"{self.output_blocked}: {EXITED_WHILE_BLOCKED}"
        return f"{self.output_blocked}: its output waits in the command's pipe"


class SlotManager:
    def __init__(self, config: Config, writer: DatabaseWriter, ingestor: Ingestor, session_umask: int = 0o022) -> None:
        self.config = config
        # The daemon's own files are private (umask 077); a session's are its own business.
        self.session_umask = session_umask
        self._sessions_fd: int | None = None
        self.writer = writer
        self.store = writer.store
        self.ingestor = ingestor
        self.checkpoint_regex = config.checkpoint_regex
        self.live: dict[str, LiveSession] = {}
        self.draining = False
        self.stopping = False  # shutdown with mode stop: start nothing more
        self.boot_id = current_boot_id()
        self._dispatch_wanted = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._shims: dict[str, subprocess.Popen] = {}

    # -- the manager's task ----------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Hold every session task, and start queued sessions as slots free up."""
        self.draining = await self.writer.run(self.store.get_setting, "draining", "0") == "1"
        # Held for the daemon's life: every session directory is made relative to it.
        self._sessions_fd = fsguard.open_dir(self.config.sessions_dir)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    await self._dispatch_wanted.wait()
                    self._dispatch_wanted = trio.Event()
                    await self._start_queued()
        finally:
            os.close(self._sessions_fd)
            self._sessions_fd = None

    async def register(self, session_id: str) -> None:
        """Number the session's next rows after its highest committed one."""
        if not self.ingestor.is_registered(session_id):
            self.ingestor.register(session_id, await self.writer.run(self.store.last_seq, session_id))

    def wake_dispatch(self) -> None:
        self._dispatch_wanted.set()

    def free_slot(self) -> int | None:
        taken = {live.slot for live in self.live.values()}
        for slot in range(1, self.config.slots + 1):
            if slot not in taken:
                return slot
        return None

    async def _start_queued(self) -> dict[str, str]:
        """Start queued sessions while slots are free; return why each one that found
        no room on the runtime disk failed, by session id."""
        refused: dict[str, str] = {}
        while not self.draining and self.free_slot() is not None:
            session = await self.writer.run(self.store.next_queued)
            # The slot is chosen only now, with no await before _start reserves it: a
            # start with queue=false may have taken the one that was free a moment ago.
            slot = self.free_slot()
            if session is None or slot is None or self.draining:
                break
            if (why := await self._start(session, slot)) is not None:
                refused[session.id] = why
        return refused

    # -- submitting and starting -----------------------------------------------------

    async def submit(
        self, argv: list[str], cwd: str, env: dict, labels: dict, priority: int, queue: bool
    ) -> Session:
        if not os.path.isabs(cwd):
            raise RequestError(ErrorCode.INVALID_ARGUMENT, f"start: 'cwd' must be an absolute path, got {cwd!r}")
        if not queue and (self.draining or self.free_slot() is None):
            why = "the daemon is draining" if self.draining else f"all {self.config.slots} slots are busy"
            raise RequestError(ErrorCode.SLOTS_FULL, f"not started: {why} (and queueing was refused)")
        session = Session(
            id=str(uuid.uuid4()),
            arrival=0,
            argv=argv,
            cwd=cwd,
            env=env,
            labels=labels,
            priority=priority,
            status="queued",
            queued_at=utc_now(),
        )
        session = await self.writer.run(self.store.create_session, session)
        self.ingestor.register(session.id, 0)
        log.info("session_queued", session_id=session.id, argv=argv, priority=priority)
        if not queue:
            slot = self.free_slot()
            if slot is None:  # taken while the insert ran: never queue what was refused
                await self.writer.run(self.store.transition, session.id, ("queued",), status="cancelled", ended_at=utc_now(), reason="no free slot")
                raise RequestError(ErrorCode.SLOTS_FULL, "not started: every slot was taken meanwhile")
            why = await self._start(session, slot)
        else:
            # A free slot takes it now: the reply says running.
            why = (await self._start_queued()).get(session.id)
        if why is not None:
            raise RequestError(ErrorCode.STORAGE_ERROR, why)
        return await self.writer.run(self.store.get_session, session.id)

    def _spec(self, session: Session, slot: int) -> dict:
        """What the shim reads: the command, and the settings it runs by."""
        env = dict(session.env)
        env["SLOTD_SESSION_ID"] = session.id
        env["SLOTD_SLOT"] = str(slot)
        return {
            "argv": session.argv,
            "cwd": session.cwd,
            "env": env,
            "flush_interval": self.config.flush_interval,
            "max_chunk_bytes": self.config.max_chunk_bytes,
            "segment_bytes": self.config.spool_segment_bytes,
            # config.py keeps segments at most half of spool_max_bytes: two fit.
            "max_segments": self.config.spool_max_bytes // self.config.spool_segment_bytes,
            "stop_timeout": self.config.stop_timeout,
        }

    async def _start(self, session: Session, slot: int) -> str | None:
        """Give a queued session a slot and spawn its shim.

        Returns None, or, when the runtime disk has no room for the session's files,
        what to tell the client who is waiting for it (the session is failed then).
        """
        if session.id in self.live:
            return None  # already being started (by the dispatcher, or a start with queue=false)
        spool_dir = self.config.sessions_dir / session.id
        live = LiveSession(session.id, slot, "running", spool_dir)
        self.live[session.id] = live  # reserves the slot before the first await
        try:
            started = await self.writer.run(
                self.store.transition,
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
            del self.live[session.id]
            raise
        if started is None:  # cancelled meanwhile
            del self.live[session.id]
            return None
        if self.stopping:
            # Shutdown with mode stop began while this start waited: do not start it.
            await self.writer.run(self.store.transition, session.id, ("running",), status="queued", slot=None, started_at=None, spool_dir=None)
            del self.live[session.id]
            return None
        bound = log.bind(session_id=session.id, slot=slot)
        await self.register(session.id)
        try:
            assert self._sessions_fd is not None
            shim_log = make_session_dir(self._sessions_fd, session.id, self._spec(session, slot))
            try:
                shim = subprocess.Popen(
                    [sys.executable, "-m", "supervisor.shim", str(spool_dir)],
                    stdin=subprocess.DEVNULL,
                    stdout=shim_log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    cwd="/",
                    umask=self.session_umask,
                )
            finally:
                os.close(shim_log)
        except (OSError, fsguard.PathError) as error:
            return await self._fail_start(live, error)
        live.shim = ProcessRef.of(shim.pid)
        self._shims[session.id] = shim
        self.ingestor.append(session.id, "system", f"started in slot {slot}\n".encode())
        self.ingestor.update(session.id, **shim_columns(live.shim, shim.pid))
        bound.info("session_started", argv=session.argv, shim_pid=shim.pid)
        assert self._nursery is not None
        self._nursery.start_soon(self._supervise, live, spool.Position(0, 0))
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
        why = f"no space left in {self.config.sessions_dir}" if no_space else getattr(error, "strerror", None) or str(error)
        log.error("shim_spawn_failed", session_id=live.id, slot=live.slot, error=str(error))
        self.ingestor.append(live.id, "system", f"could not start the shim: {why if no_space else error}\n".encode())
        self.ingestor.update(
            live.id, status="failed", slot=None, ended_at=utc_now(), reason=f"could not start shim: {why}", spool_dir=None
        )
        live.final = True
        assert self._sessions_fd is not None
        try:
            # Nothing in it is needed, and on a full disk its pages are wanted back.
            remove_session_dir(self._sessions_fd, live.id)
        except OSError as cleanup_error:
            log.warning("session_dir_not_removed", session_id=live.id, error=str(cleanup_error))
        # Not _finish: where the database shares the full disk, its commit waits for
        # room, and the client must hear now.
        await self._commit_briefly()
        await self._release(live)
        return f"session {live.id} not started: {why} (recorded as failed)" if no_space else None

    async def attach(self, session: Session, shim: ProcessRef | None, command: ProcessRef | None, note: str) -> LiveSession:
        """Re-attach a session found live at start: resume its spool at the committed offset.

        shim and command come from reconcile's identity checks (None when not running):
        an unverified PID is never signalled.
        """
        assert session.slot is not None and session.spool_dir is not None
        live = LiveSession(session.id, session.slot, session.status, Path(session.spool_dir))
        live.shim, live.command = shim, command
        live.stop_requested = session.stop_requested
        if session.pid is not None:
            live.started.set()
        self.live[session.id] = live
        await self.register(session.id)
        self.ingestor.append(session.id, "system", f"{note}\n".encode())
        assert self._nursery is not None
        position = spool.Position(session.spool_segment, session.spool_offset)
        # Segments committed whole before a crash may still be there: a shim waiting
        # for room in its spool must get it.
        spool.delete_segments_before(live.spool_dir, position.segment)
        self._nursery.start_soon(self._supervise, live, position)
        if live.stop_requested and shim is not None:
            # A stop was under way when the daemon went: its SIGKILL must still follow.
            self._nursery.start_soon(self._escalate, live, self.config.stop_timeout)
        return live

    # -- watching --------------------------------------------------------------------

    async def _supervise(self, live: LiveSession, position: spool.Position) -> None:
        bound = log.bind(session_id=live.id, slot=live.slot)
        reason = None
        try:
            final = await tail_spool(
                live.id,
                live.spool_dir,
                position,
                live.shim.pid if live.shim is not None else None,
                self.ingestor,
                on_event=lambda record, end: self._on_event(live, record, end),
                on_output=lambda data: self._on_output(live, data),
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
            # A shim still running here is left to the next daemon on purpose
            # (shutdown with on_shutdown = "keep"); reap the ones that have ended.
            self.reap_finished_shims()
        if reason is not None:
            # Its end is decided: no status may change after it, and whoever waits for
            # the command to start (a stop, a kill) must not wait for what never will.
            live.final = True
            live.started.set()
            bound.warning("session_lost", reason=reason)
            self._kill_leftovers(live)
            self.ingestor.append(live.id, "system", f"lost: {reason}\n".encode())
            self.ingestor.update(live.id, status="lost", slot=None, ended_at=utc_now(), reason=reason)
        await self._reap_shim(live.id)
        await self._finish(live)

    def _on_event(self, live: LiveSession, record: spool.Record, end: spool.Position) -> None:
        payload = json.loads(record.data)
        self.ingestor.set_position(live.id, end, live.spool_dir)
        bound = log.bind(session_id=live.id, slot=live.slot)
        if record.kind == spool.START:
            live.command = ProcessRef.recorded(payload["pid"], payload.get("start_ticks"))
            columns = command_columns(live.command, payload["pid"])
            if live.shim is None and payload.get("shim_start_ticks") is not None:
                # The daemon died between spawning the shim and recording it.
                live.shim = ProcessRef(payload["shim_pid"], payload["shim_start_ticks"])
                columns |= shim_columns(live.shim, live.shim.pid)
            live.started.set()
            self.ingestor.update(live.id, **columns)
            bound.info("command_started", pid=payload["pid"])
        elif record.kind == spool.EXIT:
            live.final = True
            exit_code, signum = payload["exit_code"], payload["signal"]
            how = describe_exit(exit_code, signum)
            if live.stop_requested:
                status, reason = "killed", f"stopped on request, {how}"
            elif exit_code == 0:
                status, reason = "completed", None
            else:
                status, reason = "failed", how
            self.ingestor.append(live.id, "system", f"{how}\n".encode())
            self.ingestor.update(
                live.id,
                status=status,
                slot=None,
                exit_code=exit_code,
                signal=signum,
                reason=reason,
                ended_at=iso_from_unix(payload["ended_at"]),
            )
            live.started.set()
            bound.info("session_exited", status=status, exit_code=exit_code, signal=signum)
        elif record.kind == spool.SPAWN_FAILED:
            live.final = True
            reason = payload["reason"]
            self.ingestor.append(live.id, "system", f"failed to start: {payload['detail']}\n".encode())
            self.ingestor.update(
                live.id, status="failed", slot=None, reason=reason, ended_at=iso_from_unix(payload["ended_at"])
            )
            live.started.set()
            bound.warning("session_spawn_failed", reason=reason, detail=payload["detail"])

    def _on_output(self, live: LiveSession, data: bytes) -> None:
        """A session whose latest output matches the checkpoint pattern waits for a person."""
        if self.checkpoint_regex is None or live.final or live.status not in ("running", "waiting_checkpoint"):
            return
        waiting = self.checkpoint_regex.search(data[-CHECKPOINT_WINDOW:]) is not None
        status = "waiting_checkpoint" if waiting else "running"
        if status != live.status:
            live.status = status
            self.ingestor.update(live.id, status=status)
            log.info("session_checkpoint" if waiting else "session_resumed_output", session_id=live.id, slot=live.slot)

    async def _finish(self, live: LiveSession) -> None:
        """Commit the session's end, free its slot and start the next queued one."""
        self.ingestor.update(live.id, spool_dir=None)  # removed below: everything is ingested
        await self.ingestor.commit_now()
        await self._release(live)

    async def _release(self, live: LiveSession) -> None:
        """Free an ended session's slot, spool and numbering; start the next queued one."""
        live.started.set()  # however it ended (a shim that could not spawn): stop waiting
        self.live.pop(live.id, None)
        live.ended.set()
        if self.store.file_problem() is None:  # else committed into a lost file: keep the spool
            # Up to spool_max_bytes of segments: not on the event loop.
            await trio.to_thread.run_sync(functools.partial(shutil.rmtree, live.spool_dir, ignore_errors=True))
        self.ingestor.forget(live.id)
        self.wake_dispatch()

    def _kill_leftovers(self, live: LiveSession) -> None:
        """No process of a lost session may run on unseen: end its group and its shim."""
        signal_group(live.command, signal.SIGKILL)
        kill_process(live.shim)

    def note_blocked_spools(self) -> None:
        """Mark the live sessions whose shim waits for disk space, and unmark the rest.

        The shim says so by its process name (see Shim.on_spool_blocked): reading it
        needs no disk, and a daemon started meanwhile reads it the same way.
        """
        for live in self.live.values():
            blocked = shim_blocked(live)
            if blocked == (live.output_blocked is not None):
                continue
            bound = log.bind(session_id=live.id, slot=live.slot)
            if blocked:
                live.output_blocked = f"no space left in {self.config.runtime_dir} since {utc_now()}"
                bound.warning("spool_blocked", runtime_dir=str(self.config.runtime_dir), free_bytes=free_bytes(self.config.runtime_dir))
                self.ingestor.append(live.id, "system", b"output waits: no space left for its spool\n")
            else:
                live.output_blocked = None
                bound.info("spool_unblocked")
                self.ingestor.append(live.id, "system", b"output resumes: its spool has room again\n")

    # -- requests on live sessions -----------------------------------------------------

    def live_session(self, session: Session, action: str) -> LiveSession:
        live = self.live.get(session.id)
        if live is None:
            raise RequestError(ErrorCode.INVALID_STATE, f"cannot {action} session {session.id}: it is {session.status}")
        return live

    async def _signal(self, live: LiveSession, signum: int) -> bool:
        """Signal the session's process group; False if there was none to signal."""
        # The group exists once the shim has started the command.
        with trio.move_on_after(2):
            await live.started.wait()
        if live.ended.is_set():
            return False
        return signal_group(live.command, signum)

    async def stop(self, session: Session, timeout: float | None, wait: bool) -> None:
        if session.status == "queued":
            await self.cancel(session)
            return
        live = self.live_session(session, "stop")
        timeout = self.config.stop_timeout if timeout is None else timeout
        self._request_stop(live, f"stop requested: SIGTERM, then SIGKILL after {timeout:g}s")
        await self._terminate(live, signal.SIGTERM)
        await self._commit_briefly()
        if wait:
            await self._escalate(live, timeout)
        else:
            assert self._nursery is not None
            self._nursery.start_soon(self._escalate, live, timeout)

    async def _terminate(self, live: LiveSession, signum: int) -> None:
        """Send a terminating signal; a paused group must also continue to act on it."""
        await self._signal(live, signum)
        if live.status == "paused" and await self._signal(live, signal.SIGCONT):
            self._set_status(live, "running")
            await self._commit_briefly()

    async def _escalate(self, live: LiveSession, timeout: float) -> None:
        """SIGKILL the group if it has not ended timeout seconds after SIGTERM.

        A command that is gone while its shim waits for disk space counts as ended: its
        shim has reaped it, and records how it ended once there is room.
        """
        with trio.move_on_after(timeout):
            await wait_ended_or_gone(live)
        if not ended_or_gone(live):
            log.info("session_stop_escalated", session_id=live.id, slot=live.slot)
            await self._signal(live, signal.SIGKILL)
            with trio.move_on_after(max(5.0, timeout)):
                await wait_ended_or_gone(live)
        self.note_blocked_spools()  # the reply says why its end is not recorded yet

    def _request_stop(self, live: LiveSession, note: str) -> None:
        # Recorded with the next flush, not waited for: the signal must go out even
        # when the disk is full.
        if live.final:
            return  # it has ended already: its end is being recorded
        live.stop_requested = True
        self.ingestor.append(live.id, "system", f"{note}\n".encode())
        self.ingestor.update(live.id, stop_requested=True)

    async def kill(self, session: Session, signum: int) -> None:
        live = self.live_session(session, "signal")
        if signum == signal.SIGSTOP:
            await self.pause(session)
        elif signum == signal.SIGCONT:
            await self.resume(session)
        elif signum in TERMINATING_SIGNALS:
            self._request_stop(live, f"kill requested: {signal.Signals(signum).name}")
            await self._terminate(live, signum)
            await self._commit_briefly()
        elif not await self._signal(live, signum):
            raise RequestError(ErrorCode.INVALID_STATE, f"cannot signal session {session.id}: its command is not running")

    async def pause(self, session: Session) -> None:
        live = self.live_session(session, "pause")
        if live.status == "paused":
            return
        if not await self._signal(live, signal.SIGSTOP):
            raise RequestError(ErrorCode.INVALID_STATE, f"cannot pause session {session.id}: its command is not running")
        self._set_status(live, "paused")
        await self._commit_briefly()

    async def resume(self, session: Session) -> None:
        live = self.live_session(session, "resume")
        if live.status != "paused":
            return
        await self._signal(live, signal.SIGCONT)
        self._set_status(live, "running")
        await self._commit_briefly()

    async def _commit_briefly(self) -> None:
        """Let the reply show the change, but never hang a request on a full disk."""
        with trio.move_on_after(REPLY_COMMIT_WAIT):
            await self.ingestor.commit_now()

    def _set_status(self, live: LiveSession, status: str) -> None:
        """Record a status change (committed with the next flush, never waited for: a
        full disk must not stop an operator from pausing or stopping anything)."""
        if live.final:
            return
        live.status = status
        self.ingestor.append(live.id, "system", f"{status}\n".encode())
        self.ingestor.update(live.id, status=status)
        log.info("session_status", session_id=live.id, slot=live.slot, status=status)

    async def cancel(self, session: Session) -> None:
        cancelled = await self.writer.run(
            self.store.transition, session.id, ("queued",), status="cancelled", ended_at=utc_now(), reason="cancelled"
        )
        if cancelled is None:
            raise RequestError(ErrorCode.INVALID_STATE, f"cannot cancel session {session.id}: it is {session.status} (stop ends a live one)")
        self.ingestor.notify_changed(session.id)  # a follower of it ends now
        log.info("session_cancelled", session_id=session.id)

    async def send(self, session: Session, data: bytes, eof: bool) -> None:
        live = self.live_session(session, "send input to")
        writer = InputWriter(live.spool_dir / spool.STDIN_FIFO)
        async with live.send_lock:
            try:
                with trio.move_on_after(SEND_TIMEOUT) as scope:
                    await writer.write(data, eof)
            except InputClosed as error:
                raise RequestError(ErrorCode.INVALID_STATE, f"cannot send input to session {session.id}: {error}") from None
            if scope.cancelled_caught:
                raise RequestError(
                    ErrorCode.INVALID_STATE,
                    f"session {session.id} is not reading its input: {writer.sent} of {len(data)} bytes sent "
                    f"before its stdin stayed full for {SEND_TIMEOUT:g}s",
                )
        if live.status == "waiting_checkpoint" and not live.final:
            live.status = "running"
            self.ingestor.update(live.id, status="running")
            await self._commit_briefly()

    async def set_draining(self, draining: bool) -> None:
        self.draining = draining
        await self.writer.run(self.store.set_setting, "draining", "1" if draining else "0")
        log.info("drain" if draining else "undrain")
        self.wake_dispatch()

    async def stop_all(self) -> None:
        """Stop every live session, including one whose start was under way."""
        self.stopping = self.draining = True
        # Bounded: a session whose end cannot be committed (a full disk) must not keep
        # the daemon from exiting; the next start reconciles it.
        with trio.move_on_after(2 * self.config.stop_timeout + 30):
            await self._stop_every_live_session()

    async def _stop_every_live_session(self) -> None:
        # Not the sessions whose command is gone while their shim waits for disk space:
        # their shims outlive the daemon to record how they ended once there is room.
        while pending := [live for live in self.live.values() if not ended_or_gone(live)]:
            async with trio.open_nursery() as nursery:
                for live in pending:
                    session = await self.writer.run(self.store.get_session, live.id)
                    if session is not None and session.status in LIVE_STATUSES:
                        nursery.start_soon(self.stop, session, None, True)
            await trio.sleep(0.05)  # a start that was mid-way has registered or backed off

    async def _reap_shim(self, session_id: str) -> None:
        """The shim exits right after its last record: wait for it, so no zombie stays."""
        shim = self._shims.get(session_id)
        if shim is None:
            return
        with trio.move_on_after(5):
            while shim.poll() is None:
                await trio.sleep(0.01)
        if shim.returncode is not None:
            self._shims.pop(session_id, None)  # reap_finished_shims may have been first

    def reap_finished_shims(self) -> None:
        for session_id, shim in list(self._shims.items()):
            if shim.poll() is not None:
                self._shims.pop(session_id, None)
