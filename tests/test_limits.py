"""Limits per session: a run time (`--timeout`) and memory (`--memory`), with real
daemons, real commands and a real SIGKILL of the daemon."""

from __future__ import annotations

import pytest

from supervisor.client import RemoteError
from supervisor.model import unix_from_iso
from supervisor.protocol import ErrorCode
from tests.harness import DaemonHandle, wait_for
from tests.helpers import py, system_text

# Ignores SIGTERM, so that only the SIGKILL after stop_timeout ends it.
STUBBORN = py(
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(600)"
)


def test_a_session_past_its_timeout_is_stopped_and_says_so(daemon: DaemonHandle) -> None:
    """`start --timeout 1s`: the session is stopped a second after its start, ends killed, and its reason, show and transcript say it timed out."""
    result = daemon.cli("start", "-q", "--timeout", "1s", "--", "sleep", "600")
    assert result.returncode == 0, result.stderr
    session_id = result.stdout.decode().strip()
    assert "1s (then stopped as by `stop`)" in daemon.cli("show", session_id).stdout.decode()
    ended = daemon.wait_ended(session_id, timeout=15)
    assert ended["status"] == "killed"
    assert ended["reason"] == "timed out after 1s, killed by SIGTERM"
    assert ended["stop_reason"] == "timed out after 1s"
    assert unix_from_iso(ended["ended_at"]) - unix_from_iso(ended["started_at"]) >= 1.0
    assert "timed out after 1s: SIGTERM, then SIGKILL after 2s" in system_text(daemon.database, session_id)


def test_a_session_that_ignores_sigterm_at_its_timeout_is_killed_after_stop_timeout(daemon: DaemonHandle) -> None:
    """At its timeout a session that ignores SIGTERM gets SIGKILL stop_timeout later (2 s here)."""
    session_id = daemon.start_session(STUBBORN, timeout=0.5)["id"]
    ended = daemon.wait_ended(session_id, timeout=20)
    assert (ended["status"], ended["signal"]) == ("killed", 9)
    assert ended["reason"] == "timed out after 0.5s, killed by SIGKILL"
    assert unix_from_iso(ended["ended_at"]) - unix_from_iso(ended["started_at"]) >= 2.5


def test_a_timeout_outlives_a_daemon_sigkill(daemon: DaemonHandle) -> None:
    """A session given 3 s is stopped at 3 s from its start though the daemon was SIGKILLed and started again meanwhile."""
    session_id = daemon.start_session(["sleep", "600"], timeout=3)["id"]
    wait_for(lambda: daemon.session(session_id)["pid"], what="the session to run")
    daemon.kill9()
    daemon.start()
    ended = daemon.wait_ended(session_id, timeout=20)
    assert ended["reason"] == "timed out after 3s, killed by SIGTERM"
    assert 3.0 <= unix_from_iso(ended["ended_at"]) - unix_from_iso(ended["started_at"]) < 10


def test_a_session_that_ends_before_its_timeout_is_left_alone(daemon: DaemonHandle) -> None:
    """A session that completes within its timeout completes, with no stop recorded."""
    session_id = daemon.start_session(["true"], timeout=60)["id"]
    ended = daemon.wait_ended(session_id)
    assert (ended["status"], ended["stop_reason"], ended["stop_requested"]) == ("completed", None, False)


def test_a_stop_on_request_says_so_in_its_reason(daemon: DaemonHandle) -> None:
    """A session stopped by `stop` (with a timeout it did not reach) is 'stopped on request'."""
    session_id = daemon.start_session(["sleep", "600"], timeout=600)["id"]
    wait_for(lambda: daemon.session(session_id)["pid"], what="the session to run")
    daemon.request("stop", session=session_id)
    ended = daemon.wait_ended(session_id)
    assert (ended["reason"], ended["stop_reason"]) == ("stopped on request, killed by SIGTERM", "stopped on request")


def test_a_memory_limit_fails_an_allocation_past_it_in_the_command_and_what_it_starts(daemon: DaemonHandle) -> None:
    """`--memory 200M`: the command and a process it starts each fail to allocate 400 MB, and show names the limit and its kind."""
    allocate = "import sys\ntry:\n    bytearray(400 << 20)\n    print('allocated')\nexcept MemoryError:\n    print('MemoryError')\n"
    program = py(allocate + "import subprocess\nsubprocess.run([sys.executable, '-c', " + repr(allocate) + "])\n")
    result = daemon.cli("run", "--memory", "200M", "--", *program)
    assert result.stdout == b"MemoryError\nMemoryError\n", result.stderr
    assert daemon.cli("run", "--", *program).stdout == b"allocated\nallocated\n"
    session = daemon.request("ps", all=True)[1]
    assert session["memory_limit"] == 200 << 20
    assert "200.0 MiB per process (RLIMIT_AS: address space)" in daemon.cli("show", session["id"]).stdout.decode()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "10m"}, "timeout"),
        ({"timeout": 1e12}, "timeout"),
        ({"memory_limit": 1024}, "memory_limit"),
        ({"memory_limit": 1.5e9}, "memory_limit"),
    ],
)
def test_start_refuses_limits_out_of_range_and_queues_nothing(shared_daemon: DaemonHandle, args, named) -> None:
    """A timeout that is not a positive number of seconds, or a memory limit below 16 MiB or not an integer, is invalid_argument naming it."""
    before = shared_daemon.request("ps", all=True)
    with pytest.raises(RemoteError) as refused:
        shared_daemon.start_session(["true"], **args)
    assert refused.value.code == ErrorCode.INVALID_ARGUMENT and f"'{named}'" in refused.value.message
    assert shared_daemon.request("ps", all=True) == before


def test_slotctl_refuses_limits_it_cannot_read(shared_daemon: DaemonHandle) -> None:
    """--timeout needs a unit and --memory a size: each is a usage error naming the option."""
    for option, value in (("--timeout", "10"), ("--memory", "lots")):
        result = shared_daemon.cli("start", option, value, "--", "true")
        assert result.returncode == 2 and option.encode() in result.stderr
