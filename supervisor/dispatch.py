"""The queue and its dispatcher: sessions wait in the database (so the queue survives
restarts) by priority, then arrival, and start in the lowest free slot as slots free
up, unless the daemon drains.
"""

from __future__ import annotations

import os
import uuid

import structlog
import trio

from supervisor.config import Config
from supervisor.database import DatabaseWriter
from supervisor.errors import InvalidArgument, SlotsFull, StorageFull
from supervisor.ingest import Ingestor
from supervisor.live import LiveSessions
from supervisor.model import MAX_SLOTS, TerminalSize, utc_now
from supervisor.runner import SessionRunner
from supervisor.store import Session

log = structlog.get_logger()


class Dispatcher:
    """The queue: takes new sessions, and starts the next queued one whenever a slot is free."""

    def __init__(
        self, config: Config, writer: DatabaseWriter, ingestor: Ingestor, live: LiveSessions, runner: SessionRunner
    ) -> None:
        self.config = config
        self.writer = writer
        self.ingestor = ingestor
        self.live = live
        self.runner = runner
        self._draining = False

    @property
    def draining(self) -> bool:
        """Queued sessions wait: drained by request, or the daemon stops its sessions."""
        return self._draining or self.live.closed

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Start queued sessions as slots free up."""
        store = self.writer.store
        self._draining = await self.writer.run(store.get_setting, "draining", "0") == "1"
        chosen = await self.writer.run(store.get_setting, "slots")
        if chosen is not None and chosen.isdigit() and 1 <= int(chosen) <= MAX_SLOTS:
            # `slotctl slots N` outlives restarts, as drain does; the config's is the first.
            self.live.slots = int(chosen)
            log.info("slots_as_set", slots=self.live.slots, configured=self.config.slots)
        task_status.started()
        while True:
            await self.live.wait_dispatch_wanted()
            await self._start_queued()

    def wake(self) -> None:
        self.live.wake_dispatch()

    async def _start_queued(self) -> dict[str, str]:
        """Start queued sessions while slots are free; return why each one that found
        no room on the runtime disk failed, by session id."""
        refused: dict[str, str] = {}
        while not self.draining and self.live.free_slot() is not None:
            session = await self.writer.run(self.writer.store.next_queued)
            # The slot is chosen only now, with no await before start reserves it: a
            # start with queue=false may have taken the one that was free a moment ago.
            slot = self.live.free_slot()
            if session is None or slot is None or self.draining:
                break
            if (why := await self.runner.start(session, slot)) is not None:
                refused[session.id] = why
        return refused

    async def submit(
        self,
        argv: list[str],
        cwd: str,
        env: dict,
        labels: dict,
        priority: int,
        nice: int | None,
        queue: bool,
        *,
        terminal: TerminalSize | None = None,
        run_time: float | None = None,
        memory_limit: int | None = None,
        inherit_env: bool = True,
        restart_of: str | None = None,
    ) -> Session:
        """Queue a new session (at `nice`, else the configured session_nice; on a
        pseudo-terminal of that size, if given; stopped after `run_time` seconds, each of
        its processes limited to `memory_limit` bytes; in the daemon's environment with env
        on top, or in env alone; recorded as a repeat of the session restart_of, if given),
        and start it now if a slot is free;
        with queue false, start it now or not at all (SlotsFull). StorageFull if the
        runtime disk has no room for its files (it is recorded as failed then)."""
        if not os.path.isabs(cwd):
            raise InvalidArgument(f"start: 'cwd' must be an absolute path, got {cwd!r}")
        if not queue and (self.draining or self.live.free_slot() is None):
            busy = "the daemon is draining" if self.draining else f"all {self.live.slots} slots are busy"
            raise SlotsFull(f"not started: {busy} (and queueing was refused)")
        session = Session(
            id=str(uuid.uuid4()),
            arrival=0,
            argv=argv,
            cwd=cwd,
            env=env,
            labels=labels,
            priority=priority,
            nice=self.config.session_nice if nice is None else nice,
            status="queued",
            queued_at=utc_now(),
            tty=terminal is not None,
            tty_cols=terminal.cols if terminal else None,
            tty_rows=terminal.rows if terminal else None,
            timeout=run_time,
            memory_limit=memory_limit,
            inherit_env=inherit_env,
            restart_of=restart_of,
        )
        store = self.writer.store
        session = await self.writer.run(store.create_session, session)
        self.ingestor.register(session.id, 0)
        log.info("session_queued", session_id=session.id, argv=argv, priority=priority)
        if not queue:
            slot = self.live.free_slot()
            if slot is None:  # taken while the insert ran: never queue what was refused
                await self.writer.run(
                    store.transition,
                    session.id,
                    ("queued",),
                    status="cancelled",
                    ended_at=utc_now(),
                    reason="no free slot",
                )
                self.ingestor.notify_changed(session.id)  # whoever waits on it sees it end
                raise SlotsFull("not started: every slot was taken meanwhile")
            why = await self.runner.start(session, slot)
        else:
            # A free slot takes it now: the reply says running.
            why = (await self._start_queued()).get(session.id)
        if why is not None:
            raise StorageFull(why)
        started = await self.writer.run(store.get_session, session.id)
        # Only another client's delete, between a failed start and this read, takes it.
        assert started is not None, f"session {session.id} was deleted while it started"
        return started

    async def set_slots(self, count: int) -> None:
        """Run at most count sessions at once from now on (and after a restart): more
        start at once if more are queued; fewer stops nothing, only starts fewer."""
        self.live.slots = count
        await self.writer.run(self.writer.store.set_setting, "slots", str(count))
        log.info("slots_set", slots=count, configured=self.config.slots)
        self.wake()

    async def set_draining(self, draining: bool) -> None:
        self._draining = draining
        await self.writer.run(self.writer.store.set_setting, "draining", "1" if draining else "0")
        log.info("drain" if draining else "undrain")
        self.wake()
