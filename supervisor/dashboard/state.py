"""The daemon's state for the dashboard's pages: one poller per dashboard process asks
the daemon for `ps` and `info` (and, once per distinct filter, the ended sessions a page
filters on) every STATE_INTERVAL, and hands each open page the newest state, so that N
open pages cost the daemon one poll, not N. Nothing is asked while no page is open.

A page that reads slowly is given only the newest state, never a backlog: what it
holds is one state, whatever the number of polls it missed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from supervisor.asyncclient import Daemon
from supervisor.client import DaemonUnavailable, RemoteError

# How often the daemon is asked for `ps` and `info` while a page is open.
STATE_INTERVAL = 0.25
# The most ended sessions a filter lists (the newest first).
FILTERED_LIMIT = 200

Filter = tuple[tuple[str, Any], ...]  # a page's `ps` arguments for its ended list, hashable


def ended_filter(statuses: list[str], labels: dict[str, str] | None) -> Filter:
    """The `ps` arguments that list the ended sessions with these statuses and labels."""
    args: dict[str, Any] = {"status": tuple(statuses)}
    if labels:
        args["labels"] = tuple(sorted(labels.items()))
    return tuple(sorted(args.items()))


class Page:
    """One open page's share of the polls: the newest state for it, and a flag raised
    when a newer one is there."""

    def __init__(self, ended: Filter | None) -> None:
        self.ended = ended
        self.state: dict[str, Any] | None = None
        self.fresh = anyio.Event()

    def offer(self, state: dict[str, Any]) -> None:
        self.state = state
        self.fresh.set()

    async def next_state(self) -> dict[str, Any]:
        """The newest state once there is one not taken yet."""
        await self.fresh.wait()
        self.fresh = anyio.Event()
        assert self.state is not None
        return self.state


class StatePoller:
    """Polls the daemon for every open page at once (run it in a task for the
    dashboard's life); pages take their states through subscribe()."""

    def __init__(self, daemon: Daemon, interval: float = STATE_INTERVAL) -> None:
        self.daemon = daemon
        self.interval = interval
        self.pages: set[Page] = set()
        self.wanted = anyio.Event()  # set while a page is open

    @asynccontextmanager
    async def subscribe(self, ended: Filter | None) -> AsyncIterator[Page]:
        """A page's share of the polls, for as long as it is open (the first page to
        open wakes the poller at once)."""
        page = Page(ended)
        self.pages.add(page)
        self.wanted.set()
        try:
            yield page
        finally:
            self.pages.discard(page)
            if not self.pages:
                self.wanted = anyio.Event()

    async def run(self) -> None:
        while True:
            await self.wanted.wait()
            await self.poll()
            await anyio.sleep(self.interval)

    async def poll(self) -> None:
        """Ask the daemon once for what every open page shows, and offer each its state."""
        pages = list(self.pages)
        try:
            common = {
                "ps": await self.daemon.request("ps", count_hidden=True),
                "info": await self.daemon.request("info"),
                "daemon": "up",
            }
            ended: dict[Filter, Any] = {}
            for page in pages:
                if page.ended is not None and page.ended not in ended:
                    args = {key: dict(value) if key == "labels" else list(value) for key, value in page.ended}
                    ended[page.ended] = await self.daemon.request("ps", limit=FILTERED_LIMIT, **args)
        except (DaemonUnavailable, OSError, RemoteError) as error:
            # Whatever the daemon did, the pages are told and the next poll tries again:
            # the poller serves them all, so it must not end (OSError: a reset, a full
            # listen backlog, as well as ConnectionError).
            down = {"daemon": "down", "error": str(error)}
            for page in pages:
                page.offer(down)
            return
        for page in pages:
            page.offer(common if page.ended is None else {**common, "ended": ended[page.ended]})
