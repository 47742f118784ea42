"""slotctl's output for people: commands shown as themselves but harmless, colour where
wanted, tables that fit the terminal, show's times and signals, starts that say when the
command could not start, and a daemon not found that says where slotctl looked."""

from __future__ import annotations

import re
from pathlib import Path

from supervisor.errors import CliExit
from tests.harness import DaemonHandle, wait_for
from tests.helpers import NEEDS_TMUX, Tmux


def test_a_command_shows_as_itself_with_its_control_characters_escaped(daemon: DaemonHandle) -> None:
    """ps shows héllo and 日本 as themselves, and an escape sequence in a command or label as escaped text, never raw."""
    daemon.start_session(["echo", "héllo", "日本", "\x1b[2J"], labels={"note": "red\x1b[31m"})
    listing = daemon.cli("ps", "-a").stdout.decode()
    assert "echo héllo 日本 \\x1b[2J" in listing
    assert "note=red\\x1b[31m" in listing
    assert "\x1b" not in listing


def test_statuses_are_coloured_when_asked_and_never_when_not(daemon: DaemonHandle) -> None:
    """--color=always colours the STATUS cell; --color=never and a pipe (auto) give plain text; show colours its status line too."""
    session_id = daemon.start_session(["sleep", "600"])["id"]
    assert "\x1b[32mrunning" in daemon.cli("ps", "--color=always").stdout.decode()
    assert "\x1b[" not in daemon.cli("ps", "--color=never").stdout.decode()
    assert "\x1b[" not in daemon.cli("ps").stdout.decode()
    assert re.search(
        r"^status: +\x1b\[32mrunning\x1b\[0m$", daemon.cli("show", "--color=always", session_id).stdout.decode(), re.M
    )


@NEEDS_TMUX
def test_ps_fits_a_narrow_terminal_by_cutting_the_command(daemon: DaemonHandle, tmp_path: Path) -> None:
    """On a 70-column terminal, ps cuts a long command with an ellipsis so that no line wraps."""
    daemon.start_session(["sh", "-c", "sleep 600; " + "echo a long command that goes on " * 5])
    narrow = Tmux(tmp_path / "narrow", cols=70, rows=20)
    try:
        narrow.start(daemon.cli_argv("ps"))
        narrow.wait_for("of run 1]")
        # All of it: tmux's "Pane is dead" line at the bottom scrolls the top away.
        table = [line for line in narrow.screen(history=True).splitlines() if line and line[0] in "I0123456789abcdef"]
        assert table[0].startswith("ID") and "sh -c sleep" in table[1] and "…" in table[1]
        assert all(len(line) <= 70 for line in table), table
    finally:
        narrow.close()


def test_show_gives_local_times_signal_names_and_the_run_time(daemon: DaemonHandle) -> None:
    """show prints times as local dates with their age, a signal by name, and how long the session ran."""
    session_id = daemon.start_session(["sleep", "600"])["id"]
    wait_for(lambda: daemon.session(session_id)["pid"], what="the command to run")
    daemon.request("stop", session=session_id)
    shown = daemon.cli("show", session_id).stdout.decode()
    assert re.search(r"^signal: +15 \(SIGTERM\)$", shown, re.MULTILINE)
    assert re.search(r"^started_at: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\d+s ago\)$", shown, re.MULTILINE)
    assert re.search(r"^ran: +\d+(\.\d+)?s$", shown, re.MULTILINE)


def test_start_of_a_command_that_cannot_start_says_so_and_fails(daemon: DaemonHandle) -> None:
    """`slotctl start` of a missing command waits for the verdict: exit 127 and the reason, not 'running'."""
    refused = daemon.cli("start", "--", "/no/such/command")
    assert refused.returncode == CliExit.NOT_STARTED
    assert b"failed" in refused.stdout and b"could not start" in refused.stderr
    assert b"/no/such/command" in refused.stderr
    started = daemon.cli("start", "--", "sleep", "600")
    assert started.returncode == 0 and started.stdout.decode().endswith(" running\n")
    session = daemon.session(started.stdout.decode().split()[0])
    assert session["pid"] is not None  # the answer came once the command ran


def test_a_daemon_not_found_says_where_slotctl_looked_and_how_to_point_it(tmp_path: Path, daemon: DaemonHandle) -> None:
    """With no daemon on the socket, slotctl names the path, why it looked there, and the options and variables that choose another."""
    result = daemon.cli("--socket", str(tmp_path / "nothing.sock"), "ps")
    assert result.returncode == CliExit.UNAVAILABLE
    message = result.stderr.decode()
    assert str(tmp_path / "nothing.sock") in message and "--socket named it" in message
    for way in ("--socket PATH", "$SLOTD_SOCKET", "--config FILE", "$SLOTD_CONFIG"):
        assert way in message
