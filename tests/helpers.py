"""Helpers the test files share: session commands, raw connections, other users, full
disks, refused starts, a stand-in for systemd's notify socket, transcript checks and a
person's terminal (tmux), a `slotctl dashboard` and its event streams. Fixtures live in conftest.py; the daemon harness (DaemonHandle,
wait_for) in harness.py, which bench/ uses as well."""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from supervisor import spool
from supervisor.model import utc_now
from supervisor.processes import ProcessRef, signal_group
from supervisor.store import Reader, Session, Store
from tests.harness import DEADLINE, DaemonHandle, wait_for

SMALL_DISK = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount a small tmpfs"
)


def py(code: str) -> list[str]:
    """A session command: this Python running code."""
    return [sys.executable, "-c", code]


def alive(pid: int | None) -> bool:
    """True while pid is a running process (a zombie waiting to be reaped counts as gone)."""
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# Holds BEGIN EXCLUSIVE on the database, says so, and lets go after argv[2] seconds.
LOCKER = (
    "import sqlite3, sys, time\n"
    "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "db.execute('BEGIN EXCLUSIVE')\n"
    "print('locked', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
    "db.execute('COMMIT')\n"
)


@contextlib.contextmanager
def write_lock_held(database: Path) -> Iterator[None]:
    """Another process holds the database's write lock (BEGIN EXCLUSIVE) until the end
    of the block: the daemon reads on, but commits nothing meanwhile."""
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(database), "600"], stdout=subprocess.PIPE)
    try:
        assert locker.stdout is not None and locker.stdout.readline() == b"locked\n"
        yield
    finally:
        locker.kill()
        locker.wait()
        assert locker.stdout is not None
        locker.stdout.close()


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


class Raw:
    """A bare connection, for sending what no well-behaved client would."""

    def __init__(self, path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Blocking while connecting: with a timeout set, a full listen backlog would be
        # EAGAIN at once instead of a short wait for the daemon to accept.
        self.sock.connect(str(path))
        self.sock.settimeout(20)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> dict:
        line = self.reader.readline()
        assert line, "connection closed"
        return json.loads(line)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def request_as(
    path: Path, uid: int, gid: int, message: bytes = b'{"id": 1, "cmd": "info"}\n', from_parent: bool = False
) -> bytes:
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


def start_refused(handle: DaemonHandle) -> subprocess.CompletedProcess:
    """Start the daemon of handle in the foreground, expecting it to refuse."""
    return subprocess.run(handle.argv, capture_output=True, text=True, timeout=60)


def refusal(result: subprocess.CompletedProcess, exit_code: int) -> str:
    """The one line a refused start printed, after checking its exit status."""
    assert result.returncode == exit_code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("slotd: ")
    return lines[0]


@contextlib.contextmanager
def notify_receiver(monkeypatch: pytest.MonkeyPatch, path: Path | None = None) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's, named in $NOTIFY_SOCKET: bound at
    path, or an abstract name when none is given. Non-blocking."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        if path is None:
            name = f"slotd-test-{uuid.uuid4()}"
            sock.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            sock.bind(str(path))
            monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()


def fill_disk(path) -> None:
    """Write to path until the filesystem has no space left."""
    block = b"\0" * 65536
    with open(path, "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(block)
        except OSError as error:
            assert error.errno == errno.ENOSPC


@contextlib.contextmanager
def daemon_on_small_disk(
    make_daemon: Callable[..., DaemonHandle], size: str = "16m", mount_at: str = "state", **settings
) -> Iterator[tuple[DaemonHandle, Path]]:
    """A running daemon whose directory mount_at (its state directory unless told
    otherwise) is a small tmpfs (unmounted after); yields the daemon and that directory."""
    daemon = make_daemon(start=False, **settings)
    state = daemon.root / mount_at
    state.mkdir()
    # mode=0700: a tmpfs root is 1777 by default, which slotd refuses for its state.
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(state)], check=True)
    try:
        daemon.start()
        yield daemon, state
    finally:
        daemon.stop()
        subprocess.run(["umount", "-l", str(state)], check=False)


def new_session(store: Store, slot: int = 1, spool_dir: Path | None = None) -> str:
    """A running session as the daemon records it, with no transcript yet."""
    session = Session(
        id=str(uuid.uuid4()),
        arrival=0,
        argv=["true"],
        cwd="/",
        status="running",
        queued_at=utc_now(),
        slot=slot,
        spool_dir=str(spool_dir) if spool_dir else None,
    )
    return store.create_session(session).id


def assert_numbers_exactly_once(database: Path, session_id: str) -> None:
    """A session that printed 0, 1, 2... then 'done N' has each line stored once, in
    order, with gapless sequence numbers."""
    reader = Reader(database)
    try:
        session = reader.get_session(session_id)
        rows = list(reader.iter_transcript(session_id))
    finally:
        reader.close()
    assert session is not None and session.truncation_seq is None, "retention truncated the transcript"
    seqs = [row.seq for row in rows]
    wrong = next((i for i, seq in enumerate(seqs) if seq != i + 1), None)
    assert wrong is None, f"seq {seqs[wrong]} at position {wrong + 1}: around it {seqs[max(0, wrong - 3) : wrong + 4]}"
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


NEEDS_TMUX = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="drives a terminal through tmux: install it (apt-get install tmux)"
)


class Tmux:
    """A person at a terminal: a tmux server of its own with one window, driven with
    send-keys and read with capture-pane."""

    def __init__(self, directory: Path, cols: int = 100, rows: int = 30) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        # A Unix socket's path has room for 107 bytes: a deep tmp_path may not fit.
        if len(str(directory / "tmux.sock")) > 100:
            directory = Path(tempfile.mkdtemp(prefix="slotd-tmux-"))
        self.socket = directory / "tmux.sock"
        # Nothing of the machine's tmux set-up; a pane stays when its command exits (set
        # before any command runs: a quick one could end before a set-option).
        self.config = directory / "tmux.conf"
        self.config.write_text("set-option -g remain-on-exit on\n")
        self.cols, self.rows = cols, rows
        self.started = False
        self.runs = 0

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", str(self.config), *args], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, f"tmux {' '.join(args)}: {result.stderr}"
        return result.stdout

    def start(self, argv: list[str]) -> None:
        """Run argv in the window (again, if it ran something before). A shell runs it and
        then prints its exit status, which exit_status reads."""
        self.runs += 1
        command = f'{shlex.join(argv)}; echo "[exit $? of run {self.runs}]"'
        if not self.started:
            self.tmux("new-session", "-d", "-x", str(self.cols), "-y", str(self.rows), command)
            self.started = True
        else:
            self.tmux("respawn-pane", "-k", command)

    def type(self, text: str) -> None:
        """Type text as it is (no key names)."""
        self.tmux("send-keys", "-l", text)

    def keys(self, *names: str) -> None:
        """Press keys by tmux's names: Enter, C-p, Up."""
        self.tmux("send-keys", *names)

    def screen(self, history: bool = False) -> str:
        """What the window shows (with history: everything scrolled off it too), trailing
        blank lines left out."""
        return self.tmux("capture-pane", "-p", *(["-S", "-"] if history else [])).rstrip("\n")

    def wait_for(self, text: str, timeout: float = DEADLINE) -> str:
        """The screen once it shows text."""
        try:
            return wait_for(
                lambda: text in (screen := self.screen()) and screen,
                timeout,
                interval=0.05,
                what=f"{text!r} on the screen",
            )
        except AssertionError as error:
            raise AssertionError(f"{error}; the screen shows:\n{self.screen()}") from None

    def resize(self, cols: int, rows: int) -> None:
        self.tmux("resize-window", "-x", str(cols), "-y", str(rows))

    def exit_status(self, timeout: float = DEADLINE) -> int:
        """The exit status of what the window runs, once it has exited."""
        screen = self.wait_for(f" of run {self.runs}]", timeout)
        found = re.search(rf"\[exit ([0-9]+) of run {self.runs}\]", screen)
        assert found, screen
        return int(found[1])

    def close(self) -> None:
        if self.started:
            subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=30)
            self.started = False


class Dashboard:
    """A `slotctl dashboard` process on a free loopback port, and the URL it printed."""

    def __init__(self, daemon: DaemonHandle, listen: str = "127.0.0.1:0", *options: str) -> None:
        with (daemon.root / "dashboard.log").open("w") as log:
            self.process = subprocess.Popen(
                daemon.cli_argv("dashboard", "--listen", listen, *options),
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        line = self.process.stdout.readline() if self.process.stdout else ""
        assert "http://" in line, f"the dashboard printed no URL: {line!r}"
        self.url = line.split("open ", 1)[1].strip()
        parts = urlsplit(self.url)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.listen = parts.netloc  # to start another on the same address
        self.token = parts.query.removeprefix("token=")

    @contextlib.contextmanager
    def client(self) -> Iterator[httpx.Client]:
        """A client that has opened the token URL, so it holds the cookie."""
        with httpx.Client(base_url=self.base, timeout=DEADLINE) as client:
            client.get(self.url, follow_redirects=True).raise_for_status()
            yield client

    def csrf(self, client: httpx.Client) -> str:
        page = client.get("/").text
        return page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=DEADLINE)
        if self.process.stdout:
            self.process.stdout.close()


def events(response: httpx.Response) -> Iterator[tuple[str, str, dict]]:
    """The Server-Sent Events of a streamed response: (event, id, data) each."""
    name, event_id, data = "message", "", ""
    for line in response.iter_lines():
        if not line:
            if data:
                yield name, event_id, json.loads(data)
            name, event_id, data = "message", "", ""
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data = line[6:]


class CountingRelay:
    """A Unix socket that passes every connection on to the daemon's, counting the
    requests that go through it by command: what a client costs the daemon."""

    def __init__(self, daemon: DaemonHandle, path: Path) -> None:
        self.daemon = daemon
        self.path = path
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(64)
        threading.Thread(target=self.accept, daemon=True).start()

    def count(self, cmd: str) -> int:
        with self.lock:
            return self.counts[cmd]

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(str(self.daemon.socket))
            except OSError:
                client.close()
                upstream.close()
                continue
            threading.Thread(target=self.pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, client, False), daemon=True).start()

    def pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        pending = b""
        try:
            while data := source.recv(65536):
                if requests:
                    *lines, pending = (pending + data).split(b"\n")
                    with self.lock:
                        self.counts.update(json.loads(line)["cmd"] for line in lines if line.strip())
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):  # wakes the other direction's pump, which closes its own
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
            source.close()

    def close(self) -> None:
        self.listener.close()
