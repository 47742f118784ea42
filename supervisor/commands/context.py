"""What every handler shares: the daemon's parts, finding a session, its object as
clients see it, and sending a page of rows under the daemon's page budget."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

import trio

from supervisor.config import Config
from supervisor.database import DatabaseWriter, ReaderPool
from supervisor.ingest import Ingestor
from supervisor.model import (
    LiveState,
    session_view,
    utc_now,
)
from supervisor.protocol import (
    ClientStalled,
    ErrorCode,
    RequestError,
)
from supervisor.slots import SlotManager
from supervisor.store import AmbiguousPrefix, Reader, Row, Session


class Emit(Protocol):
    """Sends messages of the request being answered (before its final reply), in order."""

    async def __call__(self, *messages: dict[str, Any]) -> None: ...


# A page of transcript: what one client's request holds in memory at a time.
PAGE_ROWS = 500
PAGE_BYTES = 1 << 20
# Pages all clients together may hold at once (so about 64 MiB of transcript): a client
# that stops reading keeps its page until the stall timeout lets it go, and past this
# many the others wait for a page instead of growing the daemon.
PAGES_IN_FLIGHT = 64
# How long a client may take over one page before it is let go (as control.py lets go
# of one that takes nothing for as long).
PAGE_SEND_DEADLINE = 60.0


def is_full(page: list[Row]) -> bool:
    """True if a page stopped at its limit (rows or bytes), so more may follow it."""
    return len(page) >= PAGE_ROWS or sum(len(row.data) for row in page) >= PAGE_BYTES


class PageSent(NamedTuple):
    """What a page sent to a client leaves behind (the page itself is gone by then)."""

    rows: int
    last_seq: int | None  # of the last row read, sent or not
    full: bool  # it stopped at its limit: more may follow


class CommandContext:
    """The daemon's parts a handler uses, and the helpers every kind of handler needs."""

    def __init__(
        self,
        config: Config,
        slots: SlotManager,
        readers: ReaderPool,
        writer: DatabaseWriter,
        ingestor: Ingestor,
        request_shutdown: Callable[[str | None], None],
    ) -> None:
        self.config = config
        self.slots = slots
        self.readers = readers
        self.writer = writer
        self.ingestor = ingestor
        self.request_shutdown = request_shutdown
        self.shutting_down = False
        # Clients connected on the control socket, this one included (control.serve
        # counts them): what `info` says, so that one can see a client let go.
        self.connections = 0
        self.page_slots = trio.Semaphore(PAGES_IN_FLIGHT)
        self.started_monotonic = time.monotonic()
        self.started_at = utc_now()

    async def _session(self, prefix: str) -> Session:
        try:
            session = await self.readers.run(Reader.find_session, prefix)
        except AmbiguousPrefix as error:
            raise RequestError(
                ErrorCode.AMBIGUOUS_ID, f"{error} ({', '.join(error.matches[:5])}): give more of the id"
            ) from None
        if session is None:
            raise RequestError(ErrorCode.NOT_FOUND, f"no session with id or prefix {prefix!r}")
        return session

    async def _send_page(
        self, emit: Emit, fetch: Callable[[], Awaitable[list[Row]]], shape: Callable[[Row], dict[str, Any] | None]
    ) -> PageSent:
        """Read a page and send its rows (shaped; None skips one), holding one of the
        daemon's page slots meanwhile, so that clients that read slowly or not at all
        hold PAGES_IN_FLIGHT pages at most between them."""
        async with self.page_slots:
            page = await fetch()
            sent = 0
            # One deadline for the whole page, not per piece sent: a client that takes
            # a row now and then must not keep a page slot for hours.
            with trio.move_on_after(PAGE_SEND_DEADLINE) as sending:
                for row in page:
                    message = shape(row)
                    if message is not None:
                        await emit(message)
                        sent += 1
            if sending.cancelled_caught:
                raise ClientStalled(
                    f"took {PAGE_SEND_DEADLINE:g}s over one page of transcript ({sent} of {len(page)} rows)"
                )
            return PageSent(sent, page[-1].seq if page else None, is_full(page))

    async def _current(self, session_id: str) -> dict[str, Any]:
        session = await self.readers.run(Reader.get_session, session_id)
        if session is None:
            raise RequestError(ErrorCode.NOT_FOUND, f"session {session_id} was deleted")
        return self._with_live_state(session)

    def _live_state(self, session_id: str) -> LiveState:
        """What only the daemon's memory knows of a session (all None for one not live)."""
        live = self.slots.live.get(session_id)
        return LiveState(output_blocked=live.output_note()) if live is not None else LiveState()

    def _with_live_state(self, session: Session) -> dict[str, Any]:
        """The session object, with what only the daemon's memory knows of a live one."""
        return session_view(session, self._live_state(session.id))
