"""Acting on sessions at a client's request: stop, kill, pause, resume, cancel, send
input; and, at shutdown with mode stop, stop them all.

A change of status goes to the database at once, but is never waited for: a full disk
must not keep an operator from pausing or stopping anything. The reply waits a little
for it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Awaitable, Callable

import structlog
import trio

from supervisor import spool
from supervisor.config import Config
from supervisor.database import DatabaseWriter
from supervisor.errors import InputClosed, InvalidState, SessionNotLive
from supervisor.ingest import Ingestor
from supervisor.live import STOPPED_ON_REQUEST, LiveSession, LiveSessions, ended_or_gone, wait_ended_or_gone
from supervisor.model import LIVE_STATUSES, duration_text, utc_now
from supervisor.processes import signal_group
from supervisor.runner import SessionRunner, commit_briefly
from supervisor.stdin import InputWriter
from supervisor.store import Session

log = structlog.get_logger()

# Signals after which a session that ends is recorded as killed, not failed.
# (SIGINT, SIGHUP and the like may be handled and survived: a session that later exits
# on its own is not "killed".)
TERMINATING_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL})
# How long `send` waits for a session that does not read its input.
SEND_TIMEOUT = 30.0


class Controls:
    """What a client may do to a live or queued session: stop, kill, pause, resume, cancel, send."""

    def __init__(
        self, config: Config, writer: DatabaseWriter, ingestor: Ingestor, live: LiveSessions, runner: SessionRunner
    ) -> None:
        self.config = config
        self.writer = writer
        self.ingestor = ingestor
        self.live = live
        self.runner = runner
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Hold the stops that carry on after their reply (SIGKILL after the timeout)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def _live(self, session: Session, action: str) -> LiveSession:
        live = self.live.get(session.id)
        if live is None:
            raise SessionNotLive(action, session.id, session.status)
        if live.final:  # ended, its end committed now or in a moment
            raise SessionNotLive(action, session.id, live.status)
        return live

    async def _signal(self, live: LiveSession, signum: int) -> bool:
        """Signal the session's process group; False if there was none to signal."""
        # The group exists once the shim has started the command.
        with trio.move_on_after(2):
            await live.started.wait()
        if live.ended.is_set():
            return False
        return signal_group(live.command, signum)

    async def stop(self, session: Session, grace: float | None, wait: bool) -> None:
        """SIGTERM the session's group, then SIGKILL it if it has not ended grace
        seconds later (waited for, or in the background); a queued one is cancelled."""
        if session.status == "queued":
            await self.cancel(session)
            return
        live = self._live(session, "stop")
        grace = self.config.stop_timeout if grace is None else grace
        self._request_stop(live, f"stop requested: SIGTERM, then SIGKILL after {grace:g}s")
        await self._terminate(live, signal.SIGTERM)
        await commit_briefly(self.ingestor)
        if wait:
            await self._escalate(live, grace)
        else:
            self.continue_stop(live, grace)

    def continue_stop(self, live: LiveSession, grace: float) -> None:
        """SIGKILL the session grace seconds from now unless it has ended (in the
        background: a stop not waited for, or one under way when the daemon went)."""
        assert self._nursery is not None
        self._nursery.start_soon(self._escalate, live, grace)

    async def _terminate(self, live: LiveSession, signum: int) -> None:
        """Send a terminating signal; a paused group must also continue to act on it."""
        await self._signal(live, signum)
        if live.status == "paused" and await self._signal(live, signal.SIGCONT):
            self._set_status(live, "running")
            await commit_briefly(self.ingestor)

    async def _escalate(self, live: LiveSession, grace: float) -> None:
        """SIGKILL the group if it has not ended grace seconds after SIGTERM.

        A command that is gone while its shim waits for disk space counts as ended: its
        shim has reaped it, and records how it ended once there is room.
        """
        with trio.move_on_after(grace):
            await wait_ended_or_gone(live)
        if not ended_or_gone(live):
            log.info("session_stop_escalated", session_id=live.id, slot=live.slot)
            await self._signal(live, signal.SIGKILL)
            with trio.move_on_after(max(5.0, grace)):
                await wait_ended_or_gone(live)
        self.runner.note_blocked_spools()  # the reply says why its end is not recorded yet

    def _request_stop(self, live: LiveSession, note: str, reason: str = STOPPED_ON_REQUEST) -> None:
        # Recorded with the next flush, not waited for: the signal must go out even
        # when the disk is full.
        if live.final:
            return  # it has ended already: its end is being recorded
        live.stop_requested = True
        live.stop_reason = reason
        self.ingestor.append(live.id, "system", f"{note}\n".encode())
        self.ingestor.update(live.id, stop_requested=True, stop_reason=reason)

    def watch_timeout(self, live: LiveSession) -> None:
        """Stop the session at its deadline, if it has one, as `stop` would."""
        if live.deadline is not None and live.timeout is not None:
            assert self._nursery is not None
            self._nursery.start_soon(self._stop_at_deadline, live, live.deadline, live.timeout)

    async def _stop_at_deadline(self, live: LiveSession, deadline: float, run_time: float) -> None:
        # Wall-clock time: the deadline outlives the daemon (started_at + timeout).
        with trio.move_on_after(max(0.0, deadline - time.time())):
            await live.ended.wait()
        if live.ended.is_set() or live.final or live.stop_requested:
            return  # ended, or being stopped already
        timed_out = f"timed out after {duration_text(run_time)}"
        grace = self.config.stop_timeout
        self._request_stop(live, f"{timed_out}: SIGTERM, then SIGKILL after {grace:g}s", reason=timed_out)
        await self._terminate(live, signal.SIGTERM)
        await commit_briefly(self.ingestor)
        await self._escalate(live, grace)

    async def kill(self, session: Session, signum: int) -> None:
        """Send the session's group a signal (SIGSTOP and SIGCONT pause and resume it)."""
        live = self._live(session, "signal")
        if signum == signal.SIGSTOP:
            await self.pause(session)
        elif signum == signal.SIGCONT:
            await self.resume(session)
        elif signum in TERMINATING_SIGNALS:
            self._request_stop(live, f"kill requested: {signal.Signals(signum).name}")
            await self._terminate(live, signum)
            await commit_briefly(self.ingestor)
        elif not await self._signal(live, signum):
            raise InvalidState(f"cannot signal session {session.id}: its command is not running")

    async def pause(self, session: Session) -> None:
        live = self._live(session, "pause")
        if live.status == "paused":
            return
        if not await self._signal(live, signal.SIGSTOP):
            raise InvalidState(f"cannot pause session {session.id}: its command is not running")
        self._set_status(live, "paused")
        await commit_briefly(self.ingestor)

    async def resume(self, session: Session) -> None:
        live = self._live(session, "resume")
        if live.status != "paused":
            return
        await self._signal(live, signal.SIGCONT)
        self._set_status(live, "running")
        await commit_briefly(self.ingestor)

    def _set_status(self, live: LiveSession, status: str) -> None:
        """Record a status change (committed at once, not waited for)."""
        if live.final:
            return
        live.status = status
        self.ingestor.append(live.id, "system", f"{status}\n".encode())
        self.ingestor.update(live.id, status=status)
        log.info("session_status", session_id=live.id, slot=live.slot, status=status)

    async def cancel(self, session: Session) -> None:
        """Take a queued session off the queue."""
        cancelled = await self.writer.run(
            self.writer.store.transition,
            session.id,
            ("queued",),
            status="cancelled",
            ended_at=utc_now(),
            reason="cancelled",
        )
        if cancelled is None:
            raise InvalidState(f"cannot cancel session {session.id}: it is {session.status} (stop ends a live one)")
        self.ingestor.notify_changed(session.id)  # a follower of it ends now
        log.info("session_cancelled", session_id=session.id)

    async def send(self, session: Session, data: bytes, eof: bool) -> None:
        """Write data to the session's input (then close it, with eof); a session
        waiting at a checkpoint is running again once it has its answer."""
        await self.send_to_live(self._live(session, "send input to"), data, eof)

    async def send_to_live(self, live: LiveSession, data: bytes, eof: bool) -> None:
        """send() to a session known to be live."""
        if live.final:  # found by its full id, but ended: the input would be lost
            raise SessionNotLive("send input to", live.id, live.status)
        await self._write_input(
            live,
            "send input to",
            lambda writer: writer.write(data, eof),
            lambda writer: (
                f"{writer.sent} of {len(data)} bytes sent before its stdin stayed full for {SEND_TIMEOUT:g}s"
            ),
        )
        if live.status == "waiting_checkpoint" and not live.final:
            live.status = "running"
            self.ingestor.update(live.id, status="running")
            await commit_briefly(self.ingestor)

    async def resize(self, session: Session, cols: int, rows: int) -> None:
        """Give a tty session's terminal a new window size (recorded as the session's);
        a queued one starts at that size."""
        if not session.tty:
            raise InvalidState(f"cannot resize session {session.id}: it has no terminal (started without tty)")
        if session.status == "queued":
            store = self.writer.store
            if await self.writer.run(store.transition, session.id, ("queued",), tty_cols=cols, tty_rows=rows):
                return
            started: Session | None = await self.writer.run(store.get_session, session.id)  # meanwhile
            session = started or session
        live = self._live(session, "resize")
        await self._write_input(
            live, "resize", lambda writer: writer.resize(cols, rows), lambda _writer: "its window size was not set"
        )
        self.ingestor.update(live.id, tty_cols=cols, tty_rows=rows)

    async def _write_input(
        self,
        live: LiveSession,
        action: str,
        write: Callable[[InputWriter], Awaitable[None]],
        not_taken: Callable[[InputWriter], str],
    ) -> None:
        """write(writer) to the session's input FIFO, after the writes before it, within
        SEND_TIMEOUT; not_taken(writer) says what did not go if the shim stopped reading."""
        writer = InputWriter(live.spool_dir / spool.STDIN_FIFO)
        async with live.send_lock:
            try:
                with trio.move_on_after(SEND_TIMEOUT) as scope:
                    await write(writer)
            except InputClosed as error:
                raise InvalidState(f"cannot {action} session {live.id}: {error}") from None
            if scope.cancelled_caught:
                raise InvalidState(f"session {live.id} is not reading its input: {not_taken(writer)}")

    async def stop_all(self) -> None:
        """Start nothing more, and stop every live session, including one whose start
        was under way."""
        self.live.closed = True
        # Bounded: a session whose end cannot be committed (a full disk) must not keep
        # the daemon from exiting; the next start reconciles it.
        with trio.move_on_after(2 * self.config.stop_timeout + 30):
            await self._stop_every_live_session()

    async def _stop_every_live_session(self) -> None:
        # Not the sessions whose command is gone while their shim waits for disk space:
        # their shims outlive the daemon to record how they ended once there is room.
        while pending := [live for live in self.live if not ended_or_gone(live)]:
            async with trio.open_nursery() as nursery:
                for live in pending:
                    session = await self.writer.run(self.writer.store.get_session, live.id)
                    if session is not None and session.status in LIVE_STATUSES:
                        nursery.start_soon(self._stop_if_live, session)
            await trio.sleep(0.05)  # a start that was mid-way has registered or backed off

    async def _stop_if_live(self, session: Session) -> None:
        try:
            await self.stop(session, None, True)
        except SessionNotLive:
            pass  # it ended between the read and the stop: nothing is left to stop
