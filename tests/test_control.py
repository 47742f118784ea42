"""The control socket: framing, bad input, access control, one daemon per state directory."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator

import apsw
import pytest

from supervisor.client import RemoteError
from supervisor.protocol import decode_data
from tests.harness import DaemonHandle, wait_for
from tests.helpers import SMALL_DISK, Raw, daemon_on_small_disk, fill_disk, py, request_as


def connections_to(daemon: DaemonHandle) -> Iterator[Callable[[], Raw]]:
    """Open bare connections to daemon on demand; all closed afterwards."""
    connections: list[Raw] = []

    def connect() -> Raw:
        connection = Raw(daemon.socket)
        connections.append(connection)
        return connection

    yield connect
    for connection in connections:
        connection.close()


@pytest.fixture
def raw(daemon):
    yield from connections_to(daemon)


@pytest.fixture
def shared_raw(shared_daemon):
    yield from connections_to(shared_daemon)


def assert_served(raw_connection: Raw) -> None:
    raw_connection.send(b'{"id": "check", "cmd": "ps"}\n')
    reply = raw_connection.reply()
    assert reply["id"] == "check" and reply["ok"] is True


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (b"{not json\n", "bad_request"),
        (b"\xff\xfe\n", "bad_request"),
        (b"[1, 2]\n", "bad_request"),
        (b'{"id": 1}\n', "bad_request"),
        (b'{"id": 1, "cmd": "explode"}\n', "unknown_command"),
        (b'{"id": 1, "cmd": "start", "argv": "echo hi", "cwd": "/"}\n', "invalid_argument"),
        (b'{"id": 1, "cmd": "start", "argv": [], "cwd": "/"}\n', "invalid_argument"),
        (b'{"id": 1, "cmd": "start", "argv": ["true"]}\n', "invalid_argument"),
        (b'{"id": 1, "cmd": "start", "argv": ["true"], "cwd": "relative"}\n', "invalid_argument"),
        (b'{"id": 1, "cmd": "ps", "limit": "ten"}\n', "invalid_argument"),
        (b'{"id": 1, "cmd": "ps", "colour": "red"}\n', "invalid_argument"),
        (b'{"id": 1, "cmd": "kill", "session": "x", "signal": "SIGNOPE"}\n', "invalid_argument"),
        (b'{"id": 1, "cmd": "logs", "session": "x", "tail": 3, "since_seq": 1}\n', "invalid_argument"),
        (b'{"id": 1, "cmd": "ps", "limit": 99999999999999999999}\n', "invalid_argument"),
        (b'{"id": 1, "cmd": "prune", "older_than": Infinity}\n', "bad_request"),
        (b'{"id": 1, "cmd": "start", "argv": ["true"], "cwd": "/", "labels": {"x": 1e400}}\n', "bad_request"),
        (b'{"id": 1, "cmd": "send", "session": "x", "data": "\\ud800"}\n', "invalid_argument"),
        (b'{"id": 1, "cmd": "show", "session": "ffffffff"}\n', "not_found"),
    ],
)
def test_bad_requests_get_an_error_and_the_connection_carries_on(shared_raw, message, code):
    """Malformed JSON, unknown commands and wrong types each get an error reply; the same and another connection keep being served."""
    first, second = shared_raw(), shared_raw()
    first.send(message)
    reply = first.reply()
    assert reply["ok"] is False
    assert reply["error"]["code"] == code, reply
    assert reply["error"]["message"]
    assert_served(first)
    assert_served(second)


def test_a_two_mebibyte_message_is_refused_while_others_are_served(raw):
    """A 2 MiB message gets too_large; the connection and a second client keep working."""
    first, second = raw(), raw()
    big = json.dumps({"id": 1, "cmd": "ps", "pad": "x" * (2 << 20)}).encode() + b"\n"
    first.send(big[: 1 << 20])
    assert_served(second)
    first.send(big[1 << 20 :])
    reply = first.reply()
    assert reply["error"]["code"] == "too_large"
    assert_served(first)
    assert_served(second)


def test_a_half_closed_connection_is_answered_then_closed(daemon, raw):
    """A request without its newline followed by a half-close is answered, and the daemon carries on."""
    connection = raw()
    connection.send(b'{"id": 7, "cmd": "info"}')
    connection.sock.shutdown(socket.SHUT_WR)
    reply = connection.reply()
    assert reply["id"] == 7 and reply["ok"] is True
    assert connection.reader.readline() == b""
    assert daemon.request("info")["slots"] == 3


def test_a_client_vanishing_mid_follow_hurts_no_one(daemon, raw):
    """A follow client that disconnects abruptly leaves the daemon serving everyone else."""
    session = daemon.start_session(py("import time\nwhile True:\n    print('x' * 100, flush=True); time.sleep(0.005)"))
    connection = raw()
    connection.send(json.dumps({"id": 1, "cmd": "follow", "session": session["id"]}).encode() + b"\n")
    assert "row" in connection.reply()
    connection.close()
    assert_served(raw())
    daemon.request("stop", session=session["id"])


def test_socket_is_private_to_its_owner(daemon):
    """The control socket is created with mode 0600."""
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_a_peer_with_another_uid_is_refused(daemon):
    """A client whose uid (SO_PEERCRED) is neither the daemon's nor root gets permission_denied."""
    # Let uid 65534 reach the socket at all: the check under test is the daemon's own.
    os.chmod(daemon.socket.parent, 0o711)
    os.chmod(daemon.socket, 0o666)
    reply = request_as(daemon.socket, 65534, 65534, b'{"id": 1, "cmd": "ps"}\n', from_parent=True)
    assert reply.startswith(b"{"), reply
    assert json.loads(reply)["error"]["code"] == "permission_denied"
    assert daemon.request("info")["pid"] == daemon.process.pid


def test_a_second_daemon_on_the_same_state_refuses_to_start(daemon):
    """A second slotd on the same state directory exits with a clear message; the first carries on."""
    second = subprocess.run(
        [sys.executable, "-m", "supervisor", "daemon", "--config", str(daemon.config_path)],
        capture_output=True,
        timeout=30,
    )
    assert second.returncode == 75
    assert b"already running" in second.stderr
    assert str(daemon.process.pid).encode() in second.stderr
    assert daemon.request("info")["pid"] == daemon.process.pid


def test_a_stale_socket_from_a_crashed_daemon_is_replaced(daemon):
    """After a SIGKILL, the socket file left behind is replaced by the next daemon."""
    daemon.kill9()
    assert daemon.socket.exists()
    daemon.start()
    assert daemon.request("info")["pid"] == daemon.process.pid


def test_requests_that_change_things_are_refused_while_shutting_down(make_daemon, raw):
    """While the daemon stops its sessions on the way out, start gets shutting_down and reads still work."""
    daemon = make_daemon(stop_timeout=3.0)
    # It ignores SIGTERM, so the daemon is still shutting down until the gate opens.
    gate = daemon.root / "gate"
    stubborn = f"import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)"
    session = daemon.start_session(py(stubborn))
    wait_for(lambda: b"up" in daemon.stdout_bytes(session["id"]), what="session up")
    connection = Raw(daemon.socket)
    try:
        assert daemon.request("shutdown", mode="stop")["mode"] == "stop"
        connection.send(json.dumps({"id": 2, "cmd": "start", "argv": ["true"], "cwd": "/"}).encode() + b"\n")
        assert connection.reply()["error"]["code"] == "shutting_down"
        connection.send(b'{"id": 3, "cmd": "info"}\n')
        assert connection.reply()["ok"] is True
    finally:
        connection.close()
    gate.touch()
    daemon.process.wait(30)
    assert daemon.process.returncode == 0


def test_an_unexpected_failure_in_a_handler_is_reported_and_survived(daemon):
    """When a handler meets a fault nobody planned for (a session row edited into invalid JSON behind the daemon's back), the client gets internal_error saying what failed, ps leaves the row out, and the daemon carries on."""
    session = daemon.start_session(py("pass"))
    daemon.wait_ended(session["id"])
    connection = apsw.Connection(str(daemon.database))
    connection.set_busy_timeout(5000)
    with connection:
        connection.execute("UPDATE sessions SET labels = '{broken' WHERE id = ?", (session["id"],))
    try:
        with pytest.raises(RemoteError) as caught:
            daemon.request("show", session=session["id"])
        assert caught.value.code == "internal_error"
        assert "not valid JSON" in caught.value.message
        assert daemon.request("info")["pid"] == daemon.process.pid
        assert session["id"] not in [s["id"] for s in daemon.request("ps")]  # left out, not fatal
    finally:
        with connection:
            connection.execute("UPDATE sessions SET labels = '{}' WHERE id = ?", (session["id"],))
        connection.close()


def test_input_to_a_session_whose_input_is_gone_is_refused_clearly(daemon):
    """send to a running session whose input FIFO was removed answers invalid_state, and the session and the daemon carry on."""
    session = daemon.start_session(py("import time; print('up', flush=True); time.sleep(600)"))
    # Removed only once the shim holds it open: before that, the shim would refuse to
    # start the command at all (a missing FIFO is a failed start, see test_shim).
    wait_for(lambda: b"up" in daemon.stdout_bytes(session["id"]), what="the command running")
    fifo = daemon.root / "run" / "sessions" / session["id"] / "stdin"
    fifo.unlink()
    with pytest.raises(RemoteError) as caught:
        daemon.request("send", session=session["id"], data="hello")
    assert caught.value.code == "invalid_state"
    assert "gone" in caught.value.message
    assert daemon.session(session["id"])["status"] == "running"
    daemon.request("stop", session=session["id"])


@SMALL_DISK
def test_a_full_disk_is_reported_and_nothing_is_lost_once_space_returns(make_daemon):
    """With the database's disk full, writes get storage_error naming the database and reads still work; once space returns, every line is stored."""
    with daemon_on_small_disk(make_daemon) as (daemon, state):
        gate = daemon.root / "gate"
        lines = 60_000
        code = (
            "import os, sys, time\n"
            f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
            f"for i in range({lines}): sys.stdout.write(f'{{i:08d}}' + 'x' * 91 + '\\n')\n"
        )
        session = daemon.start_session(py(code))
        daemon.wait_status(session["id"], "running")
        fill_disk(state / "filler")
        gate.touch()
        wait_for(lambda: b"batch_commit_failed" in daemon.log_path.read_bytes(), what="a failed commit")
        with pytest.raises(RemoteError) as caught:
            daemon.start_session(py("pass"))
        assert caught.value.code == "storage_error"
        assert "full" in caught.value.message and str(daemon.database) in caught.value.message
        assert daemon.request("ps")[0]["id"] == session["id"]

        (state / "filler").unlink()
        assert daemon.wait_ended(session["id"], timeout=60)["status"] == "completed"
        expected = b"".join(f"{i:08d}".encode() + b"x" * 91 + b"\n" for i in range(lines))
        assert daemon.stdout_bytes(session["id"]) == expected


def test_followers_that_hang_up_are_let_go(daemon, raw):
    """Clients that start following a quiet session and hang up do not pile up: the daemon's open files come back down."""
    session = daemon.start_session(py("import time; print('once', flush=True); time.sleep(600)"))
    wait_for(lambda: b"once" in daemon.stdout_bytes(session["id"]), what="the one line")
    before = len(os.listdir(f"/proc/{daemon.process.pid}/fd"))
    for _ in range(50):
        connection = Raw(daemon.socket)
        connection.send(json.dumps({"id": 1, "cmd": "follow", "session": session["id"]}).encode() + b"\n")
        assert "row" in connection.reply()
        connection.close()
    wait_for(
        lambda: len(os.listdir(f"/proc/{daemon.process.pid}/fd")) <= before + 5, what="the followers' sockets closed"
    )
    assert_served(raw())
    daemon.request("stop", session=session["id"])


def test_a_damaged_queued_row_fails_instead_of_stopping_the_queue(daemon):
    """A queued session whose row was edited into invalid JSON is failed when its turn comes; the queue goes on."""
    daemon.request("drain")
    damaged = daemon.start_session(py("print('never')"))
    healthy = daemon.start_session(py("print('ran')"))
    connection = apsw.Connection(str(daemon.database))
    connection.set_busy_timeout(5000)
    with connection:
        connection.execute("UPDATE sessions SET argv = '[broken' WHERE id = ?", (damaged["id"],))
    connection.close()
    daemon.request("undrain")
    assert daemon.wait_ended(healthy["id"])["status"] == "completed"
    assert daemon.request("delete", session=damaged["id"]) == {"deleted": damaged["id"]}


def test_a_half_closed_client_still_gets_its_whole_stream(daemon, raw):
    """A logs request followed by a half-close (as `nc -N` does) is streamed to the end, final reply included."""
    session = daemon.start_session(py("for i in range(5): print(i)"))
    daemon.wait_ended(session["id"])
    connection = raw()
    connection.send(json.dumps({"id": 9, "cmd": "logs", "session": session["id"]}).encode() + b"\n")
    connection.sock.shutdown(socket.SHUT_WR)
    messages = []
    while "ok" not in (message := connection.reply()):
        messages.append(message)
    assert message["ok"] is True and message["id"] == 9
    assert b"".join(decode_data(m["row"]) for m in messages if m["row"]["stream"] == "stdout") == b"0\n1\n2\n3\n4\n"
