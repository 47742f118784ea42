"""`slotctl run` behaves like the command run here: it says which session it is, passes
piped stdin on, passes Ctrl-C, SIGTERM and SIGHUP on to the session, and exits with its
status. Real slotctl processes, real daemons, real signals."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator

from supervisor.errors import CliExit
from tests.harness import DaemonHandle, wait_for
from tests.helpers import py

READ_ONE_LINE = ["sh", "-c", 'read answer; echo "got $answer"']
# Says which signal reached it, then exits 3.
TRAPS_SIGNALS = py(
    "import os, signal, sys, time\n"
    "def caught(signum, _frame):\n"
    "    print('caught', signal.Signals(signum).name, flush=True)\n"
    "    sys.exit(3)\n"
    "for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):\n"
    "    signal.signal(signum, caught)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


@contextlib.contextmanager
def background_run(daemon: DaemonHandle, *args: str, stdin=subprocess.DEVNULL) -> Iterator[subprocess.Popen]:
    """`slotctl run` in the background, ended (by its pid) and its pipes closed after."""
    runner = subprocess.Popen(
        daemon.cli_argv("run", *args), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=daemon.root
    )
    with runner:
        try:
            yield runner
        finally:
            runner.kill()


def only_session(daemon: DaemonHandle) -> dict:
    return wait_for(lambda: (sessions := daemon.request("ps", all=True)) and sessions[0], what="the session")


def test_piped_stdin_reaches_the_session_and_its_end_closes_the_sessions(daemon: DaemonHandle) -> None:
    """`echo y | slotctl run -- sh -c 'read; cat'` gives the command y and then end of input; stderr names the session."""
    result = daemon.cli("run", "--", "sh", "-c", 'read answer; echo "got $answer"; cat; echo end', input=b"y\nrest\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"got y\nrest\nend\n"
    session = only_session(daemon)
    assert result.stderr.decode().startswith(f"slotctl: session {session['id']} in slot 1\n")
    assert daemon.cli("run", "-q", "--", "true").stderr == b""


def test_stdin_from_dev_null_leaves_the_sessions_input_open_for_send(daemon: DaemonHandle) -> None:
    """With stdin /dev/null (cron, CI) the session's input stays open: `slotctl send` answers its prompt."""
    with background_run(daemon, "--", *READ_ONE_LINE) as runner:
        session = only_session(daemon)
        wait_for(lambda: daemon.session(session["id"])["pid"], what="the command to start")
        assert daemon.cli("send", session["id"], "later").returncode == 0
        out, _err = runner.communicate(timeout=15)
        assert (runner.returncode, out) == (0, b"got later\n")


def test_piped_stdin_for_a_queued_session_waits_for_its_start(make_daemon) -> None:
    """Input piped to a run that is queued reaches the command once a slot frees; stderr said it was queued."""
    daemon = make_daemon(slots=1)
    blocker = daemon.start_session(["sleep", "600"])["id"]
    with background_run(daemon, "--", *READ_ONE_LINE, stdin=subprocess.PIPE) as runner:
        assert runner.stdin is not None
        runner.stdin.write(b"queued input\n")
        runner.stdin.close()
        wait_for(lambda: len(daemon.request("ps")) == 2, what="the run to be queued")
        daemon.request("stop", session=blocker)
        assert runner.stdout is not None and runner.stderr is not None
        assert runner.wait(15) == 0
        assert runner.stdout.read() == b"got queued input\n"
        assert b"queued: every slot is busy" in runner.stderr.read()


def test_piped_stdin_to_a_tty_session_is_typed_and_its_end_is_ctrl_d(daemon: DaemonHandle) -> None:
    """On a terminal, piped input is typed (and echoed) and its end reads as end of file."""
    program = py("import sys\nprint(input().upper())\nprint(len(sys.stdin.read()))\n")
    result = daemon.cli("run", "--tty", "--", *program, input=b"abc\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"abc\r\nABC\r\n0\r\n"


def test_ctrl_c_sigterm_and_sighup_to_slotctl_run_reach_the_session(daemon: DaemonHandle) -> None:
    """Each of SIGINT, SIGTERM and SIGHUP sent to `slotctl run` reaches the command, and slotctl exits with its status."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with background_run(daemon, "-q", "--", *TRAPS_SIGNALS) as runner:
            assert runner.stdout is not None
            assert runner.stdout.readline() == b"ready\n"
            runner.send_signal(signum)
            out, err = runner.communicate(timeout=15)
            assert out == f"caught {signum.name}\n".encode(), err
            assert runner.returncode == 3


def test_detach_on_interrupt_leaves_the_session_running_and_says_so(daemon: DaemonHandle) -> None:
    """With --detach-on-interrupt, Ctrl-C stops following (exit 130, a note on stderr) and the session runs on."""
    with background_run(daemon, "-q", "--detach-on-interrupt", "--", *TRAPS_SIGNALS) as runner:
        assert runner.stdout is not None
        assert runner.stdout.readline() == b"ready\n"
        runner.send_signal(signal.SIGINT)
        _out, err = runner.communicate(timeout=15)
        assert runner.returncode == 130
        assert b"stopped following session" in err and b"it runs on" in err
        assert only_session(daemon)["status"] == "running"


def test_ctrl_c_to_a_queued_run_cancels_the_session(make_daemon) -> None:
    """Ctrl-C while the run is queued cancels it: it never starts, and slotctl says so."""
    daemon = make_daemon(slots=1)
    daemon.start_session(["sleep", "600"])
    with background_run(daemon, "--", "echo", "never") as runner:
        assert runner.stderr is not None
        assert b"queued" in runner.stderr.readline()  # said once its signals go to the session
        queued = next(s for s in daemon.request("ps") if s["status"] == "queued")
        runner.send_signal(signal.SIGINT)
        out, err = runner.communicate(timeout=15)
        assert out == b"" and b"cancelled" in err
        assert runner.returncode == CliExit.NOT_STARTED
        assert daemon.session(queued["id"])["status"] == "cancelled"
