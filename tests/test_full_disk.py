"""A full runtime disk: sessions wait for space with every byte, and the daemon says so."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from supervisor import linux
from supervisor.client import RemoteError
from tests.harness import wait_for
from tests.helpers import SMALL_DISK, alive, daemon_on_small_disk, fill_disk, notify_receiver, py

WRITERS = 3
LINES = 20_000  # ~2 MB per writer


def received_status(sock: socket.socket, seen: list[str]) -> list[str]:
    """Every STATUS= value received so far (kept in seen across calls)."""
    while True:
        try:
            datagram = sock.recv(4096).decode()
        except BlockingIOError:
            return seen
        seen.extend(line[len("STATUS=") :] for line in datagram.splitlines() if line.startswith("STATUS="))


def daemon_on_a_full_runtime_disk(make_daemon):
    """A daemon in the shipped layout (runtime directory inside the state directory),
    both on one 64 MiB tmpfs (unmounted after)."""
    return daemon_on_small_disk(make_daemon, "64m", runtime_dir="state/run", socket="run/slotd.sock", slots=WRITERS)


def expected_output(writer: int) -> bytes:
    return b"".join(f"{writer} {i:08d} ".encode() + b"x" * 88 + b"\n" for i in range(LINES))


@SMALL_DISK
def test_sessions_wait_out_a_full_runtime_disk_and_lose_nothing(make_daemon, monkeypatch):
    """Sessions writing onto a full runtime disk stay running and blocked, info, ps, the log and STATUS say so, and once space returns every byte is stored once."""
    with notify_receiver(monkeypatch) as notify, daemon_on_a_full_runtime_disk(make_daemon) as (daemon, state):
        gate = daemon.root / "gate"
        sessions = []
        for writer in range(WRITERS):
            code = (
                "import os, sys, time\n"
                f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
                f"for i in range({LINES}): sys.stdout.write(f'{writer} {{i:08d}} ' + 'x' * 88 + '\\n')\n"
            )
            sessions.append(daemon.start_session(py(code)))
        for session in sessions:
            wait_for(lambda: daemon.session(session["id"])["pid"], what="the command started")
        fill_disk(state / "filler")
        gate.touch()

        info = wait_for(
            lambda: (
                (info := daemon.request("info"))["live"]
                and all(live["output_blocked"] for live in info["live"])
                and info
            ),
            what="every session reported blocked",
        )
        assert len(info["live"]) == WRITERS
        assert "no space left" in info["live"][0]["output_blocked"]
        assert info["runtime_dir_free_bytes"] is not None and info["runtime_dir_free_bytes"] < 1 << 20
        listed = {s["id"]: s for s in daemon.request("ps")}
        for session in sessions:
            assert listed[session["id"]]["status"] == "running"
            assert "no space left" in listed[session["id"]]["output_blocked"]
            shown = daemon.session(session["id"])
            assert shown["output_blocked"] and alive(shown["shim_pid"]) and alive(shown["pid"])
        assert daemon.log_path.read_bytes().count(b"spool_blocked") >= WRITERS
        assert daemon.cli("ps").stdout.count(b"running (disk full)") == WRITERS
        assert daemon.cli("info").stdout.count(b"running (disk full)") == WRITERS
        seen: list[str] = []
        wait_for(
            lambda: any(f"{WRITERS} blocked: runtime disk full" in s for s in received_status(notify, seen)),
            what="the STATUS line",
        )

        (state / "filler").unlink()
        for writer, session in enumerate(sessions):
            assert daemon.wait_ended(session["id"], timeout=60)["status"] == "completed"
            assert daemon.stdout_bytes(session["id"]) == expected_output(writer)
        assert daemon.request("info")["live"] == []
        assert not any(s["output_blocked"] for s in daemon.request("ps"))


def daemon_with_only_its_runtime_disk_full(make_daemon, **settings):
    """A daemon whose runtime directory alone is a 16 MiB tmpfs (its database and socket
    elsewhere): what a full disk does to the shims, with the database unaffected."""
    return daemon_on_small_disk(
        make_daemon, "16m", mount_at="rt", runtime_dir="rt", socket="run/slotd.sock", **settings
    )


@SMALL_DISK
@pytest.mark.parametrize("free_pages", [0, 1], ids=["no-room", "room-for-the-spec-only"])
def test_a_start_on_a_full_runtime_disk_answers_storage_error_at_once(make_daemon, free_pages):
    """A start whose session directory or first spool record finds no room answers storage_error naming the directory at once, records the session failed, and the daemon starts the next one once there is room."""
    with daemon_with_only_its_runtime_disk_full(make_daemon) as (daemon, runtime):
        fill_disk(runtime / "filler")
        os.truncate(runtime / "filler", os.path.getsize(runtime / "filler") - free_pages * os.sysconf("SC_PAGE_SIZE"))
        started = time.monotonic()
        with pytest.raises(RemoteError) as caught:
            daemon.start_session(py("print('never')"))
        assert time.monotonic() - started < 2
        assert caught.value.code == "storage_error"
        assert f"no space left in {runtime / 'sessions'}" in caught.value.message
        [failed] = daemon.request("ps")
        assert failed["status"] == "failed" and failed["pid"] is None and not alive(failed["shim_pid"])
        assert failed["id"] in caught.value.message
        assert f"no space left in {runtime / 'sessions'}" in failed["reason"]
        assert not (runtime / "sessions" / failed["id"]).exists()  # nothing of it holds on to the disk

        (runtime / "filler").unlink()
        session = daemon.start_session(py("print('ran')"))
        assert daemon.wait_ended(session["id"])["status"] == "completed"
        assert daemon.stdout_bytes(session["id"]) == b"ran\n"


BLOCKED_WRITER = (
    "import os, sys, time\n"
    "while not os.path.exists(sys.argv[1]): time.sleep(0.02)\n"
    "for i in range(int(sys.argv[2])): sys.stdout.write(f'{i:08d} ' + 'x' * 90 + '\\n')\n"
)


def start_blocked_writer(daemon, runtime, lines: int) -> dict:
    """A session that writes `lines` 100-byte lines onto a full runtime disk, once its
    shim is reported blocked."""
    gate = daemon.root / "gate"
    session = daemon.start_session([*py(BLOCKED_WRITER), str(gate), str(lines)])
    session = wait_for(lambda: (s := daemon.session(session["id"]))["pid"] and s, what="the command started")
    fill_disk(runtime / "filler")
    gate.touch()
    wait_for(lambda: daemon.session(session["id"])["output_blocked"], what="the session reported blocked")
    return session


def expected_lines(count: int) -> bytes:
    return b"".join(f"{i:08d} ".encode() + b"x" * 90 + b"\n" for i in range(count))


@SMALL_DISK
def test_a_command_that_ends_while_its_output_waits_for_room_is_shown_as_exited_pending_its_status(make_daemon):
    """A command that exits while its shim waits for disk space is reported as exited with its status still to be stored, and is recorded completed with every line once there is room."""
    lines = 200  # 20 KB: more than the spool's last page takes, less than the pipe holds
    with daemon_with_only_its_runtime_disk_full(make_daemon) as (daemon, runtime):
        session = start_blocked_writer(daemon, runtime, lines)
        wait_for(lambda: not alive(session["pid"]), what="the command exited")
        shown = wait_for(
            lambda: "exited" in (s := daemon.session(session["id"]))["output_blocked"] and s,
            what="the note that it exited",
        )
        assert shown["status"] == "running"
        assert "its exit status is recorded once its output is stored" in shown["output_blocked"]
        assert "running (exited, disk full)" in daemon.cli("ps").stdout.decode()

        (runtime / "filler").unlink()
        assert daemon.wait_ended(session["id"])["status"] == "completed"
        assert daemon.stdout_bytes(session["id"]) == expected_lines(lines)


@SMALL_DISK
def test_stopping_a_session_whose_output_waits_for_room_ends_its_command_at_once(make_daemon):
    """stop of a session whose shim waits for disk space returns once its command is ended and reaped (not after stop_timeout), says so, and once there is room records it killed with the output it wrote."""
    with daemon_with_only_its_runtime_disk_full(make_daemon, stop_timeout=5.0) as (daemon, runtime):
        session = start_blocked_writer(daemon, runtime, 10**9)
        started = time.monotonic()
        stopped = daemon.request("stop", session=session["id"])
        assert time.monotonic() - started < 2
        assert linux.start_ticks(session["pid"]) != session["pid_start_ticks"]  # gone, not a zombie
        assert "exited" in stopped["output_blocked"]

        (runtime / "filler").unlink()
        ended = daemon.wait_ended(session["id"])
        assert (ended["status"], ended["signal"]) == ("killed", signal.SIGTERM)
        output = daemon.stdout_bytes(session["id"])
        assert len(output) > 0 and output == expected_lines(len(output) // 100)


@SMALL_DISK
def test_a_restarted_daemon_shows_a_blocked_session_whose_command_exited_meanwhile_as_exited(make_daemon):
    """A session whose command exited while the daemon was down and its shim waited for disk space is shown exited after the restart, and completes with every line once there is room."""
    lines = 200
    with daemon_with_only_its_runtime_disk_full(make_daemon) as (daemon, runtime):
        session = start_blocked_writer(daemon, runtime, lines)
        daemon.kill9()
        wait_for(lambda: not alive(session["pid"]), what="the command exited")
        daemon.start()
        wait_for(
            lambda: "exited" in (daemon.session(session["id"])["output_blocked"] or ""), what="the note that it exited"
        )

        (runtime / "filler").unlink()
        assert daemon.wait_ended(session["id"])["status"] == "completed"
        assert daemon.stdout_bytes(session["id"]) == expected_lines(lines)
