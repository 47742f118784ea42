"""A slotd process of one's own, for the tests and the benchmarks alike.

Stdlib, psutil and the product only (no pytest): bench/*.py import it too, with the
checkout on sys.path, so a benchmark's daemon is started, awaited, stopped and cleaned
up exactly as a test's is. It lives under tests/ because the tests are its main user and
pytest puts the checkout on sys.path for them already.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from supervisor.client import Client, DaemonUnavailable
from supervisor.processes import ProcessRef, kill_process, signal_group
from supervisor.store import Reader, Session

# The checkout this file belongs to: daemons run its code, whichever checkout the
# virtualenv was installed from.
CHECKOUT = Path(__file__).resolve().parent.parent
DEADLINE = 15.0
ENDED = ("completed", "failed", "killed", "lost", "cancelled")


def wait_for(
    condition: Callable[[], Any], timeout: float = DEADLINE, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll condition until it returns something truthy; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class DaemonHandle:
    """A slotd process in a directory of its own (config, state, runtime, log), and ways
    to talk to it."""

    def __init__(self, root: Path, settings: dict[str, Any]) -> None:
        self.root = root
        self.config_path = root / "slotd.toml"
        self.settings = {
            "state_dir": "state",
            "runtime_dir": "run",
            # Short, so a session that ignores SIGTERM does not hold up a teardown.
            "stop_timeout": 2.0,
            **settings,
        }
        self.process: subprocess.Popen | None = None
        self.log_path = root / "slotd.log"
        self.write_config()

    def write_config(self) -> None:
        lines = [f"{key} = {toml_value(value)}" for key, value in self.settings.items() if not isinstance(value, dict)]
        for table, values in self.settings.items():
            if isinstance(values, dict):
                lines.append(f"[{table}]")
                lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def socket(self) -> Path:
        return self.root / "run" / "slotd.sock"

    @property
    def database(self) -> Path:
        return self.root / "state" / "slotd.db"

    @property
    def argv(self) -> list[str]:
        """The command line that runs this daemon in the foreground."""
        return [sys.executable, "-m", "supervisor", "daemon", "--config", str(self.config_path)]

    def start(self, wait: bool = True, env: dict[str, str] | None = None) -> subprocess.Popen:
        assert self.process is None or self.process.poll() is not None, "this daemon is already running"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=CHECKOUT, env=env
            )
        if wait:
            self.wait_ready()
        return self.process

    def wait_ready(self, timeout: float = DEADLINE) -> None:
        wait_for(self.is_ready, timeout=timeout, what=f"slotd ready (log: {self.log_path})")

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
        return self.request("start", argv=argv, **args)

    def session(self, session_id: str) -> dict[str, Any]:
        return self.request("show", session=session_id)

    def wait_status(self, session_id: str, *statuses: str, timeout: float = DEADLINE) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.session(session_id))["status"] in statuses and s,
            timeout=timeout,
            what=f"session {session_id[:8]} to be {'/'.join(statuses)}",
        )

    def wait_ended(self, session_id: str, timeout: float = DEADLINE) -> dict[str, Any]:
        return self.wait_status(session_id, *ENDED, timeout=timeout)

    def cli_argv(self, *args: str) -> list[str]:
        """The command line of slotctl with these arguments, talking to this daemon."""
        return [sys.executable, "-m", "supervisor", "--socket", str(self.socket), *args]

    def cli(self, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.cli_argv(*args),
            input=input,
            capture_output=True,
            timeout=timeout,
            cwd=self.root,
        )

    def reader(self) -> Reader:
        return Reader(self.database)

    def stored_sessions(self) -> list[Session]:
        """Every session row in the database, read on a connection of its own."""
        reader = self.reader()
        try:
            return reader.list_sessions()
        finally:
            reader.close()

    def stdout_bytes(self, session_id: str, streams: tuple[str, ...] = ("stdout",)) -> bytes:
        reader = self.reader()
        try:
            return b"".join(row.data for row in reader.iter_transcript(session_id, streams=list(streams)))
        finally:
            reader.close()

    def log_tail(self, lines: int = 40) -> list[str]:
        """The daemon log's last lines (each cut to 300 characters), to show why it failed."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line[:300] for line in text.splitlines()[-lines:]]

    def kill9(self) -> None:
        """SIGKILL, as a crash would: the shims live on."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def shutdown(self, timeout: float = 30) -> None:
        """Stop every session, let the daemon commit what they wrote, wait for it to exit."""
        assert self.process is not None
        self.request("shutdown", mode="stop")
        self.process.wait(timeout)

    def stop(self) -> None:
        """End the daemon and every process of every session it ran (by PID)."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.shutdown()
            except Exception:
                self.process.kill()
                self.process.wait(10)
        self.kill_leftovers()

    def kill_leftovers(self) -> None:
        """SIGKILL what this daemon's sessions left, verified by recorded start ticks."""
        if not self.database.exists() or self.database.stat().st_size == 0:
            return  # none made yet, or emptied by a test: nothing recorded to end
        for session in self.stored_sessions():
            # By PID and start ticks: a reused PID is never ours to kill.
            signal_group(ProcessRef.recorded(session.pid, session.pid_start_ticks), signal.SIGKILL)
            shim = ProcessRef.recorded(session.shim_pid, session.shim_start_ticks)
            # A daemon SIGKILLed before it committed the command's PID recorded only
            # the shim's: the shim's own children lead the command's groups.
            for leader in children_of(shim):
                signal_group(leader, signal.SIGKILL)
            kill_process(shim)


def children_of(process: ProcessRef | None) -> list[ProcessRef]:
    """The children of a process that is still the one recorded."""
    if process is None:
        return []
    try:
        children = psutil.Process(process.pid).children()
    except psutil.NoSuchProcess:
        return []
    if not process.alive():  # the PID was reused meanwhile: not our shim's children
        return []
    return [ref for child in children if (ref := ProcessRef.of(child.pid)) is not None]


def clean_up_on_sigterm() -> None:
    """Make SIGTERM (a `timeout` around a benchmark, say) unwind like Ctrl-C does, so
    the `finally` blocks stop the daemons and the sessions they started."""

    def unwind(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)
