"""Terminal sessions (`start --tty`): real pseudo-terminals, real daemons, real SIGKILLs."""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
import time

import pytest

from supervisor.client import RemoteError
from supervisor.protocol import ErrorCode
from tests.harness import DaemonHandle, wait_for
from tests.helpers import py

# What a tty session reports of its terminal, as one JSON line.
DESCRIBE_TERMINAL = py(
    "import json, os; print(json.dumps({'isatty': [os.isatty(fd) for fd in (0, 1, 2)], "
    "'size': os.isatty(1) and list(os.get_terminal_size()), "
    "'foreground': os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp(), "
    "'term': os.environ.get('TERM')}))"
)


def transcript(daemon: DaemonHandle, session_id: str) -> list[tuple[str, bytes]]:
    """The session's committed rows as (stream, data), system rows left out."""
    reader = daemon.reader()
    try:
        return [(row.stream, row.data) for row in reader.iter_transcript(session_id) if row.stream != "system"]
    finally:
        reader.close()


def tty_output(daemon: DaemonHandle, session_id: str) -> bytes:
    return b"".join(data for stream, data in transcript(daemon, session_id) if stream == "tty")


def test_a_tty_session_has_a_terminal_on_stdin_stdout_and_stderr_of_the_size_given(daemon) -> None:
    """`run --tty --size` gives the command a controlling terminal of that size as stdin, stdout and stderr, stored as tty rows."""
    result = daemon.cli("run", "--tty", "--size", "100x30", "--", *DESCRIBE_TERMINAL)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen == {"isatty": [True, True, True], "size": [100, 30], "foreground": True, "term": "xterm-256color"}
    session = daemon.request("ps", all=True)[0]
    assert (session["tty"], session["tty_cols"], session["tty_rows"]) == (True, 100, 30)
    # The terminal's line discipline turns the newline into \r\n: stored as it gave it,
    # in as many reads (rows) as the terminal took to pass it on (its text and its
    # \r\n come apart now and then).
    rows = transcript(daemon, session["id"])
    assert {stream for stream, _ in rows} == {"tty"}
    assert b"".join(data for _, data in rows) == result.stdout
    assert result.stdout.endswith(b"}\r\n")
    assert daemon.cli("logs", "--raw", session["id"]).stdout == result.stdout
    assert re.search(rb"^tty: +100x30$", daemon.cli("show", session["id"]).stdout, re.MULTILINE)


def test_a_tty_session_without_a_size_or_a_client_terminal_is_80_by_24(daemon) -> None:
    """Without --size and with no terminal of its own, slotctl's tty session gets 80x24 (and a plain session no terminal)."""
    result = daemon.cli("run", "--tty", "-e", "TERM=vt100", "--", *DESCRIBE_TERMINAL)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert (seen["size"], seen["term"]) == ([80, 24], "vt100")
    plain = daemon.start_session(DESCRIBE_TERMINAL)
    assert (plain["tty"], plain["tty_cols"], plain["tty_rows"]) == (False, None, None)
    daemon.wait_ended(plain["id"])
    assert json.loads(daemon.stdout_bytes(plain["id"]))["isatty"] == [False, False, False]


def test_slotctl_on_a_terminal_gives_a_tty_session_its_own_window_size(daemon) -> None:
    """slotctl start --tty run from a terminal asks for that terminal's size; --size overrides it."""
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 43, 132, 0, 0))
        argv = [sys.executable, "-m", "supervisor", "--socket", str(daemon.socket), "start", "--json", "--tty"]
        own = subprocess.run([*argv, "--", "true"], stdin=slave, capture_output=True, timeout=60, check=True)
        sized = subprocess.run(
            [*argv, "--size", "90x20", "--", "true"], stdin=slave, capture_output=True, timeout=60, check=True
        )
    finally:
        os.close(master)
        os.close(slave)
    assert [json.loads(own.stdout)[name] for name in ("tty", "tty_cols", "tty_rows")] == [True, 132, 43]
    assert [json.loads(sized.stdout)[name] for name in ("tty_cols", "tty_rows")] == [90, 20]


def test_a_python_program_on_a_tty_shows_each_line_in_logs_follow_as_it_prints_it(daemon) -> None:
    """Python line-buffers on a terminal: without PYTHONUNBUFFERED each line printed reaches `logs -f` well within 1.5 s."""
    program = "import time\nfor i in range(3):\n    print(f'{i} {time.time()}')\n    time.sleep(1)\n"
    session = daemon.start_session(["env", "-u", "PYTHONUNBUFFERED", sys.executable, "-c", program], tty=True)
    with subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--socket", str(daemon.socket), "logs", "-f", session["id"]],
        stdout=subprocess.PIPE,
    ) as follower:
        assert follower.stdout is not None
        delays = []
        try:
            for line in follower.stdout:
                if line.strip() and not line.startswith(b"[slotd]"):
                    _number, printed_at = line.split()
                    delays.append(time.time() - float(printed_at))
            assert follower.wait(10) == 0
        finally:
            follower.kill()
    assert len(delays) == 3
    assert max(delays) < 1.5, delays


def test_input_sent_to_a_tty_session_reaches_it_through_the_terminal_which_echoes_it(daemon) -> None:
    """`send` types into the terminal: the command reads the line, the terminal echoes it, and eof types Ctrl-D."""
    program = "import sys\nprint(input().upper())\nprint(len(sys.stdin.read()))\n"
    session = daemon.start_session(py(program), tty=True)
    daemon.cli("send", session["id"], "hello")
    wait_for(lambda: b"HELLO" in tty_output(daemon, session["id"]), what="the answer to the input")
    daemon.cli("send", session["id"], "ab")
    result = daemon.cli("send", "--eof", session["id"])
    assert result.returncode == 0, result.stderr
    ended = daemon.wait_ended(session["id"])
    assert (ended["status"], ended["exit_code"]) == ("completed", 0)
    rows = transcript(daemon, session["id"])
    assert [data for stream, data in rows if stream == "stdin"] == [b"hello\n", b"ab\n", b"\x04"]
    # Echoed by the terminal, then the program's own lines: "ab\n" is 3 characters.
    assert tty_output(daemon, session["id"]) == b"hello\r\nHELLO\r\nab\r\n3\r\n"


def test_a_tty_session_loses_nothing_and_sees_no_hang_up_across_a_daemon_sigkill(make_daemon) -> None:
    """A tty session keeps running through a daemon SIGKILL: every line once, its input after, its exit status recorded."""
    daemon = make_daemon()
    program = (
        "import sys, time\n"
        "for i in range(40):\n    print(f'line {i}')\n    time.sleep(0.02)\n"
        "print('waiting', flush=True)\n"
        "print('got', input())\n"
        "sys.exit(7)\n"
    )
    session = daemon.start_session(py(program), tty=True)
    wait_for(lambda: b"line 1\r\n" in tty_output(daemon, session["id"]), what="the first lines")
    daemon.kill9()
    spool_dir = daemon.root / "run" / "sessions" / session["id"]

    def spooled() -> bytes:
        return b"".join(path.read_bytes() for path in spool_dir.glob("spool.*"))

    wait_for(lambda: b"waiting" in spooled(), what="the session to print on without the daemon")
    daemon.start()
    daemon.cli("send", session["id"], "bye")
    ended = daemon.wait_ended(session["id"])
    assert (ended["status"], ended["exit_code"], ended["signal"]) == ("failed", 7, None)
    expected = b"".join(f"line {i}\r\n".encode() for i in range(40)) + b"waiting\r\nbye\r\ngot bye\r\n"
    assert tty_output(daemon, session["id"]) == expected


def test_a_terminal_size_without_tty_is_refused_by_the_daemon_and_by_slotctl(shared_daemon) -> None:
    """tty_cols without tty is invalid_argument naming both; slotctl refuses --size without --tty and a malformed size."""
    with pytest.raises(RemoteError) as refused_start:
        shared_daemon.request("start", argv=["true"], cwd="/", tty_cols=100)
    assert refused_start.value.code == ErrorCode.INVALID_ARGUMENT
    assert "'tty_cols' and 'tty_rows' are a terminal's size" in refused_start.value.message
    refused = shared_daemon.cli("start", "--size", "100x30", "--", "true")
    assert (refused.returncode, refused.stderr) == (2, b"slotctl: --size is a terminal's size: give it with --tty\n")
    malformed = shared_daemon.cli("start", "--tty", "--size", "100x0", "--", "true")
    assert malformed.returncode == 2
    assert b"expected COLSxROWS, each from 1 to 1000, got '100x0'" in malformed.stderr


def test_a_tty_sessions_command_gets_no_window_size_variables_from_the_daemon(make_daemon) -> None:
    """COLUMNS and LINES the daemon inherited do not reach a tty session's command (curses would believe them over its terminal), unless the session's env sets them; a plain session keeps them."""
    daemon = make_daemon(start=False)
    daemon.start(env={**os.environ, "COLUMNS": "80", "LINES": "24"})
    show = py("import os; print(os.environ.get('COLUMNS'), os.environ.get('LINES'))")

    def output(**args) -> bytes:
        # Through the protocol without an environment: the daemon's is the base.
        session_id = daemon.start_session(show, **args)["id"]
        daemon.wait_ended(session_id)
        return daemon.stdout_bytes(session_id, ("stdout", "tty"))

    assert output(tty=True) == b"None None\r\n"
    assert output(tty=True, env={"COLUMNS": "132"}) == b"132 None\r\n"
    assert output() == b"80 24\n"
