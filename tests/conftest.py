"""Fixtures that run real daemons on real sockets and real SQLite files under tmp_path."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor import spool
from supervisor.client import Client, DaemonUnavailable
from supervisor.processes import ProcessRef, kill_process, signal_group
from supervisor.store import Reader

DEADLINE = 15.0


def wait_for(condition: Callable[[], Any], timeout: float = DEADLINE, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll condition until it returns something truthy; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def alive(pid: int | None) -> bool:
    """True while pid is a running process (a zombie waiting to be reaped counts as gone)."""
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def end_shim_run(process: subprocess.Popen, records: list[spool.Record]) -> None:
    """Teardown of a test's own shim: if it recorded no exit, end its command's group
    (verified by the start ticks in its START record), then the shim itself."""
    finished = any(r.kind in (spool.EXIT, spool.SPAWN_FAILED) for r in records)
    start = next((json.loads(r.data) for r in records if r.kind == spool.START), None)
    if start is not None and not finished:
        signal_group(ProcessRef.recorded(start["pid"], start.get("start_ticks")), signal.SIGKILL)
    if process.poll() is None:
        process.kill()
    process.wait(10)


def request_as(path: Path, uid: int, gid: int, message: bytes = b'{"id": 1, "cmd": "info"}\n', from_parent: bool = False) -> bytes:
    """Send one request to the socket at path as uid/gid (no supplementary groups): the
    reply line, or why it could not connect. Forked, not exec'd: another uid may not
    reach this Python. from_parent enters the socket's directory as root first, so only
    that directory's search permission (not its parents') stands in the way."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            if from_parent:
                os.chdir(path.parent)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            client = socket.socket(socket.AF_UNIX)
            client.settimeout(10)
            try:
                client.connect(path.name if from_parent else str(path))
            except OSError as error:
                os.write(write_end, f"connect failed: {error.strerror}".encode())
            else:
                try:
                    client.sendall(message)
                except BrokenPipeError:
                    pass  # the daemon may refuse before it reads: its reply is waiting all the same
                os.write(write_end, client.makefile("rb").readline())
        except BaseException as error:
            os.write(write_end, f"child failed: {error!r}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        reply = pipe.read()
    os.waitpid(child, 0)
    return reply


def assert_numbers_exactly_once(database: Path, session_id: str) -> None:
    """A session that printed 0, 1, 2... then 'done N' has each line stored once, in
    order, with gapless sequence numbers."""
    reader = Reader(database)
    try:
        rows = list(reader.iter_transcript(session_id))
    finally:
        reader.close()
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
    lines = b"".join(row.data for row in rows if row.stream == "stdout").decode().splitlines()
    assert lines[-1].startswith("done ")
    count = int(lines[-1].split()[1])
    assert lines[:-1] == [str(n) for n in range(count)]


def system_text(database: Path, session_id: str) -> str:
    """A session's system rows (the daemon's notes on it), as text."""
    reader = Reader(database)
    try:
        return b"".join(row.data for row in reader.iter_transcript(session_id, streams=["system"])).decode()
    finally:
        reader.close()


class DaemonHandle:
    """A slotd process of the test's own, and ways to talk to it."""

    def __init__(self, root: Path, settings: dict[str, Any]) -> None:
        self.root = root
        self.config_path = root / "slotd.toml"
        self.settings = {
            "state_dir": "state",
            "runtime_dir": "run",
            "stop_timeout": 2.0,
            **settings,
        }
        self.process: subprocess.Popen | None = None
        self.log_path = root / "slotd.log"
        self.write_config()

    def write_config(self) -> None:
        def toml(value: Any) -> str:
            if isinstance(value, str):
                return f"'{value}'"
            if isinstance(value, bool):
                return "true" if value else "false"
            return str(value)

        lines = [f"{key} = {toml(value)}" for key, value in self.settings.items() if not isinstance(value, dict)]
        for table, values in self.settings.items():
            if isinstance(values, dict):
                lines.append(f"[{table}]")
                lines.extend(f"{key} = {toml(value)}" for key, value in values.items())
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def socket(self) -> Path:
        return self.root / "run" / "slotd.sock"

    @property
    def database(self) -> Path:
        return self.root / "state" / "slotd.db"

    def start(self, wait: bool = True) -> subprocess.Popen:
        assert self.process is None or self.process.poll() is not None, "this daemon is already running"
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "daemon", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        if wait:
            wait_for(self.is_ready, what=f"slotd ready (log: {self.log_path})")
        return self.process

    def is_ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"slotd exited with {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}")
        if not self.socket.exists():
            return False
        try:
            with self.client() as client:
                # Ready means *this* process answers, not one left over on the socket.
                return client.request("info")["pid"] == self.process.pid
        except (OSError, ConnectionError, DaemonUnavailable):
            return False

    def client(self, timeout: float | None = 30) -> Client:
        return Client(self.socket, timeout=timeout)

    def request(self, cmd: str, **args: Any) -> Any:
        with self.client() as client:
            return client.request(cmd, **args)

    def start_session(self, argv: list[str], **args: Any) -> dict[str, Any]:
        args.setdefault("cwd", str(self.root))
        session = self.request("start", argv=argv, **args)
        return session

    def session(self, session_id: str) -> dict[str, Any]:
        session = self.request("show", session=session_id)
        return session

    def wait_status(self, session_id: str, *statuses: str, timeout: float = DEADLINE) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.session(session_id))["status"] in statuses and s,
            timeout=timeout,
            what=f"session {session_id[:8]} to be {'/'.join(statuses)}",
        )

    def wait_ended(self, session_id: str, timeout: float = DEADLINE) -> dict[str, Any]:
        return self.wait_status(session_id, "completed", "failed", "killed", "lost", "cancelled", timeout=timeout)

    def cli(self, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "supervisor", "--socket", str(self.socket), *args],
            input=input,
            capture_output=True,
            timeout=timeout,
            cwd=self.root,
        )

    def reader(self) -> Reader:
        return Reader(self.database)

    def stdout_bytes(self, session_id: str) -> bytes:
        reader = self.reader()
        try:
            return b"".join(row.data for row in reader.iter_transcript(session_id, streams=["stdout"]))
        finally:
            reader.close()

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        """End the daemon and every process of every session it ran (by PID)."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.request("shutdown", mode="stop")
                self.process.wait(30)
            except Exception:
                self.process.kill()
                self.process.wait(10)
        self.kill_leftovers()

    def kill_leftovers(self) -> None:
        """SIGKILL what this daemon's sessions left, verified by recorded create times."""
        if not self.database.exists() or self.database.stat().st_size == 0:
            return  # none made yet, or emptied by a test: nothing recorded to end
        reader = self.reader()
        try:
            sessions = reader.list_sessions()
        finally:
            reader.close()
        for session in sessions:
            # By PID and start ticks: a reused PID is never ours to kill.
            signal_group(ProcessRef.recorded(session.pid, session.pid_start_ticks), signal.SIGKILL)
            kill_process(ProcessRef.recorded(session.shim_pid, session.shim_start_ticks))


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonHandle]]:
    handles: list[DaemonHandle] = []

    def make(start: bool = True, **settings: Any) -> DaemonHandle:
        root = tmp_path / f"d{len(handles)}"
        root.mkdir()
        handle = DaemonHandle(root, settings)
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


def py(code: str) -> list[str]:
    """A session command: this Python running code."""
    return [sys.executable, "-c", code]
