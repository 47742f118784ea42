"""`slotctl attach`, driven as a person would: in a real terminal (tmux), typing with
send-keys and looking with capture-pane, against real daemons and real tty sessions."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from supervisor.cli.attach import DetachKeys, parse_detach_keys
from supervisor.client import RemoteError
from supervisor.errors import CliError
from supervisor.protocol import ErrorCode, decode_data
from supervisor.replay import CLEAR
from tests.harness import DaemonHandle, wait_for
from tests.helpers import NEEDS_TMUX, Tmux, py

# A full-screen program: curses, the alternate screen, partial updates after the first
# draw, a redraw on SIGWINCH.
CURSES_APP = py(
    """
import curses

def main(screen):
    keys = []
    while True:
        screen.erase()
        rows, cols = screen.getmaxyx()
        screen.box()
        screen.addstr(1, 2, "slotd curses test")
        screen.addstr(2, 2, f"size {cols}x{rows}")
        screen.addstr(3, 2, f"keys {len(keys)} last {keys[-1] if keys else '-'}")
        screen.refresh()
        key = screen.getch()
        if key == ord("Q"):
            return
        if key != curses.KEY_RESIZE:
            keys.append(chr(key))

curses.wrapper(main)
"""
)


def shell(tmp_path: Path, prompt: str) -> list[str]:
    """An interactive bash with its own prompt and nothing of the machine's set-up."""
    rcfile = tmp_path / f"{prompt.strip('$ ')}.bashrc"
    rcfile.write_text(f"PS1='{prompt}'\n")
    return ["bash", "--noprofile", "--rcfile", str(rcfile), "-i"]


def start_tty(daemon: DaemonHandle, argv: list[str], ready: bytes) -> str:
    """A tty session of 80x24, once its program has printed `ready`: a window size
    changed while a program starts may be missed, in a terminal as here."""
    session_id = daemon.start_session(argv, tty=True, tty_cols=80, tty_rows=24)["id"]
    wait_for(lambda: ready in daemon.stdout_bytes(session_id, ("tty",)), what=f"the session to print {ready!r}")
    return session_id


def attach_argv(daemon: DaemonHandle, session_id: str, *options: str) -> list[str]:
    return daemon.cli_argv("attach", *options, session_id)


@NEEDS_TMUX
def test_attach_types_resizes_and_detaches_with_ctrl_p_ctrl_q_giving_the_terminal_back(
    daemon: DaemonHandle, terminal: Tmux, tmp_path: Path
) -> None:
    """In a terminal, attach shows the session's prompt, sends what is typed, gives it the window's size as it changes, and Ctrl-P Ctrl-Q leaves it running with the terminal's settings as before."""
    session_id = start_tty(daemon, shell(tmp_path, "tty$ "), b"tty$")
    terminal.start(shell(tmp_path, "here$ "))
    terminal.wait_for("here$")
    terminal.type(
        f'saved=$(stty -g); {" ".join(attach_argv(daemon, session_id))}; echo "exit=$?"; '
        '[ "$(stty -g)" = "$saved" ] && echo terminal-restored'
    )
    terminal.keys("Enter")
    terminal.wait_for("tty$")
    terminal.type("echo $((6 * 7)); stty size")
    terminal.keys("Enter")
    terminal.wait_for("42\n30 100")  # the window's size, given on attach
    terminal.resize(120, 40)
    terminal.type("stty size")
    terminal.keys("Enter")
    terminal.wait_for("40 120")
    terminal.keys("C-p", "C-q")
    screen = terminal.wait_for("terminal-restored")
    assert "exit=0" in screen and "detached from session" in screen
    session = daemon.session(session_id)
    assert session["status"] == "running"
    assert (session["tty_cols"], session["tty_rows"]) == (120, 40)
    # What was typed reached the session as input rows, not one row per key.
    stdin_rows = [row for row in daemon.reader().iter_transcript(session_id) if row.stream == "stdin"]
    assert b"".join(row.data for row in stdin_rows) == b"echo $((6 * 7)); stty size\rstty size\r"
    assert len(stdin_rows) < len(b"echo $((6 * 7)); stty size\rstty size\r")


@NEEDS_TMUX
def test_a_full_screen_program_looks_the_same_when_attached_again(daemon: DaemonHandle, terminal: Tmux) -> None:
    """A curses program's screen, after keys and a resize, is drawn again exactly as it was by a second attach; leaving gives the shell's screen back."""
    session_id = start_tty(daemon, CURSES_APP, b"slotd curses test")
    terminal.start(attach_argv(daemon, session_id))
    terminal.wait_for("size 100x30")
    terminal.type("abc")
    terminal.wait_for("keys 3 last c")
    terminal.resize(120, 40)
    terminal.wait_for("size 120x40")
    terminal.type("d")
    before = terminal.wait_for("keys 4 last d")
    terminal.keys("C-p", "C-q")
    assert terminal.exit_status() == 0
    after_detach = terminal.screen()
    assert "slotd curses test" not in after_detach, "the alternate screen was left on"
    assert daemon.session(session_id)["status"] == "running"

    terminal.start(attach_argv(daemon, session_id))
    assert terminal.wait_for("keys 4 last d") == before
    terminal.type("Q")
    assert terminal.exit_status() == 0
    assert daemon.wait_ended(session_id)["status"] == "completed"


@NEEDS_TMUX
def test_attach_rides_out_a_daemon_sigkill_with_every_line_once_and_input_still_working(
    daemon: DaemonHandle, terminal: Tmux
) -> None:
    """The daemon SIGKILLed and started again under an attached client: the session runs on, the client reconnects, each line shows once, and typing still reaches it."""
    program = py(
        "import time\n"
        "for i in range(1, 151):\n"
        "    print(f'line {i}', flush=True)\n"
        "    time.sleep(0.03)\n"
        "answer = input('type something: ')\n"
        "print(f'got {answer}')\n"
    )
    session_id = start_tty(daemon, program, b"line 1\r\n")
    terminal.start(attach_argv(daemon, session_id))
    terminal.wait_for("line 20\n")
    daemon.kill9()
    daemon.start()
    terminal.wait_for("type something:", timeout=30)
    terminal.type("hello")
    terminal.keys("Enter")
    terminal.wait_for("got hello")
    assert terminal.exit_status() == 0
    shown = [line for line in terminal.screen(history=True).splitlines() if line.startswith("line ")]
    assert shown == [f"line {i}" for i in range(1, 151)]
    stored = b"".join(row.data for row in daemon.reader().iter_transcript(session_id) if row.stream == "tty")
    assert stored.count(b"line 7\r\n") == 1 and stored.endswith(b"got hello\r\n")


@NEEDS_TMUX
def test_two_clients_attached_at_once_see_the_same_output_and_both_can_type(
    daemon: DaemonHandle, terminal: Tmux, tmp_path: Path
) -> None:
    """Two terminals attached to one session both show what either one types."""
    session_id = start_tty(daemon, shell(tmp_path, "tty$ "), b"tty$")
    other = Tmux(tmp_path / "other")
    try:
        terminal.start(attach_argv(daemon, session_id))
        other.start(attach_argv(daemon, session_id))
        terminal.wait_for("tty$")
        other.wait_for("tty$")
        terminal.type("echo from-$((1 + 1))-first")
        terminal.keys("Enter")
        other.type("echo from-$((2 + 1))-second")
        other.keys("Enter")
        for person in (terminal, other):
            person.wait_for("from-2-first")
            person.wait_for("from-3-second")
        terminal.keys("C-p", "C-q")
        assert terminal.exit_status() == 0
        other.type("exit 5")
        other.keys("Enter")
        assert other.exit_status() == 5  # the session's own exit status
    finally:
        other.close()


@NEEDS_TMUX
def test_detach_keys_of_ones_own_choosing_and_a_ctrl_p_that_is_not_followed_by_ctrl_q(
    daemon: DaemonHandle, terminal: Tmux, tmp_path: Path
) -> None:
    """With --detach-keys ctrl-a,d, Ctrl-A D detaches; a Ctrl-P alone reaches the session as typed."""
    session_id = start_tty(daemon, shell(tmp_path, "tty$ "), b"tty$")
    terminal.start(attach_argv(daemon, session_id, "--detach-keys", "ctrl-a,d"))
    terminal.wait_for("tty$")
    terminal.type("echo one")
    terminal.keys("C-p", "C-q")  # not the detach keys here: bash sees them (Ctrl-P recalls a line)
    terminal.keys("C-u")
    terminal.type("echo two")
    terminal.keys("Enter")
    terminal.wait_for("two\n")
    terminal.keys("C-a", "d")
    assert terminal.exit_status() == 0
    assert daemon.session(session_id)["status"] == "running"


def test_attach_refuses_a_session_without_a_terminal_an_ended_one_and_bad_detach_keys(daemon: DaemonHandle) -> None:
    """attach says why it cannot: a session without --tty, an ended session, detach keys it cannot read."""
    plain = daemon.start_session(["sleep", "600"])["id"]
    refused = daemon.cli("attach", plain)
    assert refused.returncode == 1 and b"has no terminal (started without --tty)" in refused.stderr
    ended = daemon.start_session(["true"], tty=True)["id"]
    daemon.wait_ended(ended)
    refused = daemon.cli("attach", ended)
    assert refused.returncode == 1 and b"has ended (completed)" in refused.stderr
    refused = daemon.cli("attach", "--detach-keys", "ctrl-pq", plain)
    assert refused.returncode == 2 and b"--detach-keys 'ctrl-pq'" in refused.stderr


def test_resize_reaches_the_program_and_is_recorded(daemon: DaemonHandle) -> None:
    """`resize` sets the terminal's size, the program gets SIGWINCH and sees it, and the session records it."""
    program = py(
        "import os, signal, time\n"
        "signal.signal(signal.SIGWINCH, lambda *_: print('size', *os.get_terminal_size(), flush=True))\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    session_id = start_tty(daemon, program, b"ready")
    assert daemon.request("resize", session=session_id, cols=132, rows=43) == {"tty_cols": 132, "tty_rows": 43}
    wait_for(lambda: b"size 132 43\r\n" in daemon.stdout_bytes(session_id, ("tty",)), what="the program's new size")
    session = wait_for(lambda: (s := daemon.session(session_id))["tty_cols"] == 132 and s)
    assert session["tty_rows"] == 43


def test_screen_and_resize_refuse_what_has_no_terminal_and_sizes_out_of_range(daemon: DaemonHandle) -> None:
    """screen and resize of a session without a terminal are invalid_state; a size of 0 is invalid_argument; resize of an ended session says it has ended."""
    plain = daemon.start_session(["sleep", "600"])["id"]
    for command, args in (("screen", {}), ("resize", {"cols": 80, "rows": 24})):
        with pytest.raises(RemoteError) as refused:
            daemon.request(command, session=plain, **args)
        assert refused.value.code == ErrorCode.INVALID_STATE and "has no terminal" in refused.value.message
    with pytest.raises(RemoteError) as refused:
        daemon.request("resize", session=plain, cols=0, rows=24)
    assert refused.value.code == ErrorCode.INVALID_ARGUMENT and "'cols'" in refused.value.message
    ended = daemon.start_session(["true"], tty=True)["id"]
    daemon.wait_ended(ended)
    # Seen ended, perhaps before its slot is freed: refused all the same (send by its
    # full id, as attach sends, takes another path to the session).
    for command, args in (("resize", {"cols": 80, "rows": 24}), ("send", {"data": "x"})):
        with pytest.raises(RemoteError) as refused:
            daemon.request(command, session=ended, **args)
        assert refused.value.code == ErrorCode.INVALID_STATE and "completed" in refused.value.message


def test_screen_sends_the_output_from_the_last_full_redraw_with_the_modes_set_before_it(daemon: DaemonHandle) -> None:
    """`screen` of a session that entered the alternate screen and cleared it is that mode, then the output from the clear; `through` is its last row."""
    program = py(
        "import sys, time\n"
        "sys.stdout.write('old lines\\n' * 50 + '\\x1b[?1049h\\x1b[?1h' + 'old frame' + '\\x1b[2J\\x1b[Hnew frame')\n"
        "sys.stdout.flush()\n"
        "time.sleep(600)\n"
    )
    session_id = start_tty(daemon, program, b"new frame")
    screen = daemon.request("screen", session=session_id)
    assert decode_data(screen) == CLEAR + b"\x1b[?1049h\x1b[?1h" + b"\x1b[2J\x1b[Hnew frame"
    assert screen["through"] == daemon.reader().last_seq(session_id)
    assert (screen["tty_cols"], screen["tty_rows"], screen["status"]) == (80, 24, "running")


def test_detach_keys_pass_on_what_only_began_the_sequence() -> None:
    """Ctrl-P then another key sends both; Ctrl-P Ctrl-Q split over two reads detaches; a sequence of one key detaches at once."""
    keys = DetachKeys(parse_detach_keys("ctrl-p,ctrl-q"))
    assert keys.feed(b"ab\x10c") == (b"ab\x10c", False)
    assert keys.feed(b"x\x10") == (b"x", False)
    assert keys.feed(b"\x10\x11rest") == (b"\x10", True)
    assert DetachKeys(parse_detach_keys("ctrl-\\")).feed(b"a\x1cb") == (b"a", True)
    assert parse_detach_keys("ctrl-a,d") == b"\x01d"
    for bad in ("", "ctrl-", "ctrl-1", "ab", "ctrl-p,,ctrl-q"):
        with pytest.raises(CliError):
            parse_detach_keys(bad)


def test_screen_data_is_base64_when_the_output_is_not_utf8(daemon: DaemonHandle) -> None:
    """A screen holding bytes that are not UTF-8 comes as base64, byte for byte."""
    program = py("import os, time\nos.write(1, b'\\x1b[2J\\xff\\xfe latin')\ntime.sleep(600)\n")
    session_id = start_tty(daemon, program, b"latin")
    screen = daemon.request("screen", session=session_id)
    assert screen["encoding"] == "base64"
    assert base64.b64decode(screen["data"]) == CLEAR + b"\x1b[2J\xff\xfe latin"


@NEEDS_TMUX
def test_attach_to_a_queued_session_shows_it_from_its_start_at_the_windows_size(
    make_daemon, terminal: Tmux, tmp_path: Path
) -> None:
    """Attached while it waits for a slot, a tty session starts at the window's size and its first output is shown."""
    daemon = make_daemon(slots=1)
    blocker = daemon.start_session(["sleep", "600"])["id"]
    session_id = daemon.start_session(shell(tmp_path, "tty$ "), tty=True, tty_cols=80, tty_rows=24)["id"]
    assert daemon.session(session_id)["status"] == "queued"
    terminal.start(attach_argv(daemon, session_id))
    wait_for(lambda: daemon.session(session_id)["tty_cols"] == 100, what="the queued session to take the window's size")
    daemon.request("stop", session=blocker)
    terminal.wait_for("tty$")
    terminal.type("stty size")
    terminal.keys("Enter")
    terminal.wait_for("30 100")


@NEEDS_TMUX
def test_detaching_while_the_daemon_is_down_leaves_at_once(
    daemon: DaemonHandle, terminal: Tmux, tmp_path: Path
) -> None:
    """With the daemon gone (attach waiting for it to come back), Ctrl-P Ctrl-Q still detaches at once, exit 0."""
    session_id = start_tty(daemon, shell(tmp_path, "tty$ "), b"tty$")
    terminal.start(attach_argv(daemon, session_id))
    terminal.wait_for("tty$")
    daemon.kill9()
    terminal.keys("C-p", "C-q")
    assert terminal.exit_status(timeout=5) == 0
