"""A full runtime disk: sessions wait for space with every byte, and the daemon says so."""

from __future__ import annotations

import socket

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
        seen.extend(line[len("STATUS="):] for line in datagram.splitlines() if line.startswith("STATUS="))


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
            lambda: (info := daemon.request("info"))["live"] and all(live["output_blocked"] for live in info["live"]) and info,
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
        seen: list[str] = []
        wait_for(lambda: any(f"{WRITERS} blocked: runtime disk full" in s for s in received_status(notify, seen)), what="the STATUS line")

        (state / "filler").unlink()
        for writer, session in enumerate(sessions):
            assert daemon.wait_ended(session["id"], timeout=60)["status"] == "completed"
            assert daemon.stdout_bytes(session["id"]) == expected_output(writer)
        assert daemon.request("info")["live"] == []
        assert not any(s["output_blocked"] for s in daemon.request("ps"))
