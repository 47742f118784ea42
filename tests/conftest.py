"""Fixtures that run real daemons on real sockets and real SQLite files under tmp_path.

Helpers the test files share are in helpers.py; the daemon harness in harness.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import DaemonHandle
from tests.helpers import Tmux

# The tests' daemons run sessions at their own priority, not below it: the tests'
# deadlines assume a session's command gets its share of the CPU, which a niced one does
# not on a machine busy with other work. tests/test_priority.py tests the nice values.
AT_THE_DAEMONS_PRIORITY = {"session_nice": 0}


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonHandle]]:
    handles: list[DaemonHandle] = []

    def make(start: bool = True, **settings: Any) -> DaemonHandle:
        root = tmp_path / f"d{len(handles)}"
        root.mkdir()
        handle = DaemonHandle(root, {**AT_THE_DAEMONS_PRIORITY, **settings})
        handles.append(handle)
        if start:
            handle.start()
        return handle

    yield make
    for handle in handles:
        handle.stop()


@pytest.fixture
def daemon(make_daemon: Callable[..., DaemonHandle]) -> DaemonHandle:
    return make_daemon()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonHandle]:
    """One daemon for a module's tests that leave it as they found it (bad input it
    refuses, say): for parametrized cases a start-up each costs more than the cases."""
    handle = DaemonHandle(tmp_path_factory.mktemp("shared"), AT_THE_DAEMONS_PRIORITY)
    try:
        handle.start()
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Tmux]:
    """A person's terminal, 100x30: a tmux window of its own, closed after the test."""
    tmux = Tmux(tmp_path)
    try:
        yield tmux
    finally:
        tmux.close()
