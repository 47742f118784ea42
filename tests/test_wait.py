"""slotctl wait: blocking until sessions end or reach a checkpoint, through the real
slotctl against a real daemon."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from supervisor.errors import CliExit
from tests.harness import DaemonHandle, wait_for
from tests.helpers import py

# A session that exits with CODE once the file GATE exists in its directory.
GATED = "import os, sys, time\nwhile not os.path.exists({gate!r}): time.sleep(0.02)\nsys.exit({code})"


def gated(daemon: DaemonHandle, gate: str, code: int) -> dict:
    return daemon.start_session(py(GATED.format(gate=str(daemon.root / gate), code=code)))


def open_gate(daemon: DaemonHandle, gate: str) -> None:
    (daemon.root / gate).touch()


def slotctl(daemon: DaemonHandle, *args: str) -> subprocess.Popen:
    """slotctl in the background, as a script waiting for sessions runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--socket", str(daemon.socket), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=daemon.root,
    )


def is_connected(process: subprocess.Popen) -> bool:
    """Whether the process holds a Unix socket (slotctl opens none but the daemon's)."""
    return bool(psutil.Process(process.pid).net_connections(kind="unix"))


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=30)
    return process.returncode, out.decode(), err.decode()


def test_wait_returns_when_the_session_ends_with_its_exit_status(daemon):
    """slotctl wait ID blocks while the session runs and exits with its exit code once it ends."""
    session = gated(daemon, "go", 3)
    waiting = slotctl(daemon, "wait", session["id"][:8])
    wait_for(lambda: is_connected(waiting), what="slotctl wait connected")
    assert waiting.poll() is None
    open_gate(daemon, "go")
    status, out, _ = finish(waiting)
    assert status == 3
    assert out == f"{session['id'][:8]} failed 3\n"


def test_wait_for_several_exits_with_the_status_of_the_last_to_end(daemon):
    """Without --any, wait returns once every session has ended, with the exit status of the one that ended last."""
    first = gated(daemon, "first", 5)
    last = gated(daemon, "last", 7)
    waiting = slotctl(daemon, "wait", last["id"], first["id"])
    wait_for(lambda: is_connected(waiting), what="slotctl wait connected")
    open_gate(daemon, "first")
    daemon.wait_ended(first["id"])
    assert waiting.poll() is None
    open_gate(daemon, "last")
    assert finish(waiting)[0] == 7


def test_wait_any_returns_at_the_first_end_with_its_status(daemon):
    """With --any, wait returns when the first of the sessions ends, with its exit status, the others still running."""
    ends = gated(daemon, "ends", 5)
    runs = gated(daemon, "never", 0)
    waiting = slotctl(daemon, "wait", "--any", runs["id"], ends["id"])
    wait_for(lambda: is_connected(waiting), what="slotctl wait connected")
    open_gate(daemon, "ends")
    assert finish(waiting)[0] == 5
    assert daemon.session(runs["id"])["status"] == "running"


def test_wait_timeout_exits_124_naming_the_sessions_still_running(daemon):
    """When --timeout passes first, wait exits 124 and names on stderr the sessions it still waited for."""
    ended = daemon.start_session(py("pass"))
    daemon.wait_ended(ended["id"])
    runs = gated(daemon, "never", 0)
    result = daemon.cli("wait", ended["id"], runs["id"], "--timeout", "0.3s")
    assert result.returncode == CliExit.TIMED_OUT == 124
    assert f"still waiting for: {runs['id']} (running)" in result.stderr.decode()
    assert ended["id"] not in result.stderr.decode()


def waiting_for_a_prompt(daemon: DaemonHandle, prompt: str) -> tuple[dict, subprocess.Popen]:
    """A session that writes `prompt` (then reads a line) once the test opens its gate,
    and a `slotctl wait --until checkpoint` connected to wait for it; the gate is open."""
    gate = daemon.root / "ask"
    code = (
        "import os, sys, time\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
        f"sys.stdout.write({prompt!r}); sys.stdout.flush()\n"
        "sys.stdin.readline()\n"
    )
    session = daemon.start_session(py(code))
    waiting = slotctl(daemon, "wait", "--until", "checkpoint", session["id"])
    wait_for(lambda: is_connected(waiting), what="slotctl wait connected")
    gate.touch()
    return session, waiting


def test_wait_until_checkpoint_returns_when_the_session_waits_for_a_person(make_daemon):
    """wait --until checkpoint exits 0 once the session is waiting_checkpoint, and leaves it waiting there."""
    daemon = make_daemon(checkpoint_pattern=r"Continue\? \[y/N\]")
    session, waiting = waiting_for_a_prompt(daemon, "Continue? [y/N] ")
    assert finish(waiting)[0] == 0
    assert daemon.session(session["id"])["status"] == "waiting_checkpoint"


def test_a_status_change_is_committed_at_once_not_at_the_next_flush(make_daemon):
    """With flush_interval at its most (10 s), wait --until checkpoint still returns within a few seconds of the prompt: a status change does not wait for the next flush."""
    daemon = make_daemon(checkpoint_pattern=r"Continue\? \[y/N\]", flush_interval=10)
    # A whole line: the shim would hold a partial one for flush_interval.
    session, waiting = waiting_for_a_prompt(daemon, "Continue? [y/N]\n")
    try:
        waiting.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        waiting.kill()
        waiting.communicate()
        pytest.fail("wait --until checkpoint did not return within 5 s of the prompt")
    assert waiting.returncode == 0
    daemon.request("kill", session=session["id"])


def test_wait_until_checkpoint_exits_4_when_the_session_ends_without_one(daemon):
    """wait --until checkpoint on a session that ends without reaching a checkpoint exits 4 and says so."""
    session = gated(daemon, "go", 0)
    waiting = slotctl(daemon, "wait", "--until", "checkpoint", session["id"])
    wait_for(lambda: is_connected(waiting), what="slotctl wait connected")
    open_gate(daemon, "go")
    status, _, err = finish(waiting)
    assert status == CliExit.NO_CHECKPOINT == 4
    assert "ended (completed) without reaching a checkpoint" in err


def test_wait_carries_on_across_a_daemon_restart(daemon):
    """A wait whose daemon is killed and started again reconnects and still returns the session's exit status at its end."""
    session = gated(daemon, "go", 9)
    waiting = slotctl(daemon, "wait", session["id"][:6])
    wait_for(lambda: is_connected(waiting), what="slotctl wait connected")
    daemon.kill9()
    daemon.start()
    wait_for(lambda: is_connected(waiting), what="slotctl wait connected again")
    open_gate(daemon, "go")
    assert finish(waiting)[0] == 9


def test_wait_for_an_unknown_session_is_refused(daemon):
    """wait for an id no session has exits 1 with not_found, naming the id."""
    result = daemon.cli("wait", "nosuchid")
    assert result.returncode == CliExit.REFUSED
    assert "'nosuchid'" in result.stderr.decode() and "[not_found]" in result.stderr.decode()


def test_wait_with_a_timeout_does_not_outwait_it_for_a_lost_daemon(daemon):
    """A wait whose daemon goes away for good exits 3 once its timeout has passed, not after the 120 s reconnect window."""
    session = gated(daemon, "never", 0)
    waiting = slotctl(daemon, "wait", "--timeout", "2s", session["id"])
    wait_for(lambda: is_connected(waiting), what="slotctl wait connected")
    daemon.kill9()
    status, _, err = finish(waiting)
    assert status == CliExit.UNAVAILABLE
    assert "did not come back within 2s" in err
