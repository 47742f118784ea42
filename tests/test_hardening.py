"""What no client can do to the daemon: end it, break `ps` for others, start what the
shim cannot run, or make it hold unbounded memory."""

from __future__ import annotations

import functools
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import apsw
import psutil
import pytest
import structlog
import trio

from supervisor import control, jsonlimits, socketfile, spool
from supervisor.arguments import MAX_LABELS_BYTES
from supervisor.client import RemoteError
from supervisor.commands import Commands
from supervisor.config import Config
from supervisor.database import DatabaseWriter, ReaderPool
from supervisor.ingest import Ingestor
from supervisor.jsonlimits import MAX_DEPTH
from supervisor.model import utc_now
from supervisor.protocol import MAX_ID_BYTES
from supervisor.slots import SlotManager
from supervisor.store import Session, Store
from tests.harness import wait_for
from tests.helpers import SMALL_DISK, Raw, daemon_on_small_disk, fill_disk, py


def request_line(**message) -> bytes:
    return json.dumps(message).encode() + b"\n"


def nested(depth: int, inner: bytes = b"") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


# -- messages that once ended the daemon ---------------------------------------------------


DEEP_SHAPES = {
    **{f"id {depth} deep": b'{"id": ' + nested(depth) + b', "cmd": "info"}\n' for depth in range(960, 1001, 4)},
    "id 5000 deep": b'{"id": ' + nested(5000) + b', "cmd": "info"}\n',
    "id 200000 deep, never closed": b'{"id": ' + b"[" * 200_000 + b"\n",
    "labels 983 deep": b'{"id": 1, "cmd": "start", "argv": ["true"], "cwd": "/", "labels": {"a": '
    + nested(983)
    + b"}}\n",
    "objects 983 deep": b'{"id": 1, "cmd": "ps", "labels": ' + b'{"a": ' * 983 + b"1" + b"}" * 983 + b"}\n",
    "one level too deep": b'{"id": ' + nested(MAX_DEPTH) + b', "cmd": "info"}\n',
}


@pytest.mark.parametrize("message", DEEP_SHAPES.values(), ids=DEEP_SHAPES.keys())
def test_a_deeply_nested_message_gets_bad_request_and_the_daemon_carries_on(shared_daemon, message):
    """A message nested deeper than the limit (anywhere, however deep) gets bad_request, and the same daemon then answers info."""
    connection = Raw(shared_daemon.socket)
    try:
        connection.send(message)
        reply = connection.reply()
        assert reply["ok"] is False and reply["error"]["code"] == "bad_request", reply
        assert f"nested deeper than {MAX_DEPTH}" in reply["error"]["message"]
        connection.send(b'{"id": "after", "cmd": "info"}\n')
        after = connection.reply()
    finally:
        connection.close()
    assert after["id"] == "after" and after["result"]["pid"] == shared_daemon.process.pid
    assert shared_daemon.request("info")["pid"] == shared_daemon.process.pid
    assert shared_daemon.request("ps") == []  # nothing was started


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16", "utf-32"])
def test_json_in_another_unicode_encoding_cannot_slip_past_the_depth_check(encoding):
    """A message in UTF-16 or UTF-32 (which json.loads would detect by itself) is refused as not UTF-8, whatever its nesting."""
    text = '{"id": ["\u2200", ' + "[" * 600 + "]" * 600 + ', "x"], "cmd": "info"}'
    with pytest.raises(ValueError):
        jsonlimits.loads(text.encode(encoding))
    with pytest.raises(jsonlimits.TooDeep):  # as UTF-8 it is read, and refused as too deep
        jsonlimits.loads(text.encode("utf-8"))


def test_a_request_id_over_the_limit_gets_bad_request_without_being_copied_back(daemon):
    """An id over MAX_ID_BYTES as JSON (it would be copied into every streamed row) gets bad_request with id null; one at the limit is echoed."""
    connection = Raw(daemon.socket)
    try:
        at_limit = "x" * (MAX_ID_BYTES - 2)  # the quotes make it MAX_ID_BYTES
        connection.send(request_line(id=at_limit, cmd="info"))
        assert connection.reply()["id"] == at_limit
        connection.send(request_line(id="x" * MAX_ID_BYTES, cmd="info"))
        reply = connection.reply()
        assert reply["id"] is None and reply["error"]["code"] == "bad_request"
        assert f"over {MAX_ID_BYTES} bytes" in reply["error"]["message"]
    finally:
        connection.close()


def test_nesting_up_to_the_limit_and_brackets_in_strings_are_accepted(daemon):
    """A message exactly at the depth limit, and one with thousands of brackets inside strings, are answered normally."""
    with daemon.client() as client:
        deepest = json.loads(nested(MAX_DEPTH - 1))  # the request object is one level
        client.sock.sendall(json.dumps({"id": deepest, "cmd": "info"}).encode() + b"\n")
        assert client.receive()["id"] == deepest
        # In a label filter: an id that long is over MAX_ID_BYTES (see below).
        client.sock.sendall(json.dumps({"id": 2, "cmd": "ps", "labels": {"k": "[{" * 5000}}).encode() + b"\n")
        assert client.receive()["ok"] is True


# -- labels --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [
        {"big": "x" * MAX_LABELS_BYTES},
        {"\ud800": 1},
        {"k": ["\udfff"]},
        {"huge": 1 << 64},
    ],
    ids=["over 64 KiB", "surrogate key", "surrogate value", "integer beyond 64 bits"],
)
def test_labels_that_could_not_be_sent_back_are_refused_before_anything_is_created(shared_daemon, labels):
    """start with labels too large or not encodable gets invalid_argument naming labels, and creates no session."""
    connection = Raw(shared_daemon.socket)
    try:
        connection.send(
            json.dumps({"id": 1, "cmd": "start", "argv": ["true"], "cwd": "/", "labels": labels}).encode() + b"\n"
        )
        reply = connection.reply()
    finally:
        connection.close()
    assert reply["error"]["code"] == "invalid_argument", reply
    assert "'labels'" in reply["error"]["message"]
    assert shared_daemon.request("ps") == []


def test_labels_within_the_limits_are_kept_and_listed(daemon):
    """Labels nested as deep as a message allows, and near 64 KiB, are stored, listed by ps and matched by a filter."""
    deep = json.loads(b'{"a": ' * (MAX_DEPTH - 3) + b"1" + b"}" * (MAX_DEPTH - 3))
    labels = {"deep": deep, "big": "y" * (MAX_LABELS_BYTES - 1000)}
    session = daemon.start_session(py("pass"), labels=labels)
    daemon.wait_ended(session["id"])
    assert daemon.request("ps")[0]["labels"] == labels
    assert [s["id"] for s in daemon.request("ps", labels={"deep": deep})] == [session["id"]]


DAMAGE = {
    "labels nested 900 deep": ("labels", '{"a": ' + "[" * 900 + "]" * 900 + "}"),
    "labels not JSON": ("labels", "{broken"),
    "labels with NaN": ("labels", '{"a": NaN}'),
    "reason not UTF-8": ("reason", b"\xff\xfe"),
    "exit code a blob": ("exit_code", b"\x00\x01"),
    "infinite create time": ("pid_create_time", float("inf")),
}


@pytest.mark.parametrize("column, value", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_row_is_left_out_of_ps_for_everyone_else(daemon, column, value):
    """A stored row slotd cannot send (written by an older slotd or edited by hand) is left out of ps, filtered or not, and logged; the other sessions are listed."""
    damaged = daemon.start_session(py("pass"), labels={"team": "a"})
    healthy = daemon.start_session(py("pass"), labels={"team": "a"})
    daemon.wait_ended(damaged["id"])
    daemon.wait_ended(healthy["id"])
    connection = apsw.Connection(str(daemon.database))
    connection.set_busy_timeout(5000)
    with connection:
        if isinstance(value, bytes) and column != "exit_code":
            connection.execute(f"UPDATE sessions SET {column} = CAST(? AS TEXT) WHERE id = ?", (value, damaged["id"]))
        else:
            connection.execute(f"UPDATE sessions SET {column} = ? WHERE id = ?", (value, damaged["id"]))
    connection.close()
    assert [s["id"] for s in daemon.request("ps")] == [healthy["id"]]
    assert [s["id"] for s in daemon.request("ps", labels={"team": "a"})] == [healthy["id"]]
    wait_for(
        lambda: f"session {damaged['id']}: column {column}".encode() in daemon.log_path.read_bytes(),
        what="the damage logged",
    )
    assert daemon.request("delete", session=damaged["id"]) == {"deleted": damaged["id"]}


# -- what the shim cannot run --------------------------------------------------------------


@pytest.mark.parametrize(
    "argument, args",
    [
        ("argv", {"argv": ["echo", "a\0b"]}),
        ("argv", {"argv": ["ec\0ho"]}),
        ("cwd", {"cwd": "/tmp\0/x"}),
        ("env", {"env": {"KEY": "a\0b"}}),
        ("env", {"env": {"K\0EY": "v"}}),
        ("env", {"env": {"A=B": "v"}}),
        ("env", {"env": {"": "v"}}),
    ],
    ids=[
        "NUL in an argument",
        "NUL in the command",
        "NUL in cwd",
        "NUL in an env value",
        "NUL in an env name",
        "= in an env name",
        "empty env name",
    ],
)
def test_input_the_shim_cannot_run_is_refused_at_start(shared_daemon, argument, args):
    """start with a NUL in argv, cwd or env, or an env name that is empty or holds '=', gets invalid_argument naming the argument, and nothing is created."""
    request = {"argv": ["true"], "cwd": "/", **args}
    with shared_daemon.client() as client:
        reply = next(message for message in client.messages("start", **request) if "ok" in message)
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_argument", reply
    assert reply["error"]["message"].startswith(f"start: {argument!r} must be")
    assert shared_daemon.request("ps") == []


# -- memory per client ---------------------------------------------------------------------


def test_many_clients_holding_partial_requests_stay_within_the_budget(daemon):
    """120 clients each holding ~1 MB of an unfinished request cost at most the 64 MiB budget: the biggest holders get too_large and are closed, and a new client is served."""
    pid = daemon.process.pid
    before = rss(pid)
    chunk = b'{"id": 1, "cmd": "ps", "pad": "' + b"x" * 1_000_000
    connections = []
    try:
        for _ in range(120):
            connection = Raw(daemon.socket)
            connections.append(connection)
            try:
                connection.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused while sending: counted below
        assert daemon.request("info")["pid"] == pid
        grown = rss(pid) - before
        refused = 0
        for connection in connections:
            # A refused connection had its reply sent when it was refused.
            connection.sock.settimeout(0.1)
            try:
                reply = connection.reply()
            except (AssertionError, ConnectionResetError, TimeoutError):
                continue
            assert reply["error"]["code"] == "too_large"
            assert "unanswered requests" in reply["error"]["message"]
            refused += 1
    finally:
        for connection in connections:
            connection.close()
    assert refused >= 50
    assert grown < 100 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB"
    assert b"client_disconnected" in daemon.log_path.read_bytes()


def growth_with_stalled_readers(daemon, lines: int, clients: int, seconds: float, **args) -> int:
    """How much the daemon's RSS grows while `clients` logs requests on a transcript of
    `lines` KiB lines are never read; it must still answer meanwhile."""
    code = f"import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range({lines}): sys.stdout.write(line)"
    session = daemon.start_session(py(code))
    daemon.wait_ended(session["id"], timeout=60)
    pid = daemon.process.pid
    daemon.request("logs", session=session["id"], tail=1)  # warm the reader pool
    before = rss(pid)
    connections = [Raw(daemon.socket) for _ in range(clients)]
    try:
        for connection in connections:
            connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            connection.send(request_line(id=1, cmd="logs", session=session["id"], **args))
        # Each handler fills its socket, then waits; give them all time to get there.
        samples = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            samples.append(rss(pid))
            time.sleep(0.1)
        assert daemon.request("info")["pid"] == pid
    finally:
        for connection in connections:
            connection.close()
    return max(samples) - before


@pytest.mark.parametrize("args", [{}, {"tail": 10**9}], ids=["logs", "logs --tail"])
def test_clients_that_stop_reading_a_large_transcript_hold_little(daemon, args):
    """Ten logs clients (whole or tail) that never read a 30 MB transcript make the daemon grow by little: it holds about a page per client, not the transcript."""
    grown = growth_with_stalled_readers(daemon, lines=30000, clients=10, seconds=5, **args)
    assert grown < 60 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB for 10 stalled clients"


def test_many_clients_that_stop_reading_share_a_bounded_number_of_pages(daemon):
    """150 logs clients that never read hold no more than the daemon's pages in flight (about 64 MiB), not a page each, and the daemon keeps answering."""
    grown = growth_with_stalled_readers(daemon, lines=4000, clients=150, seconds=8)
    assert grown < 100 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB for 150 stalled clients"


def test_one_connection_past_the_limit_is_told_so_and_the_rest_are_served(daemon):
    """With control.MAX_CONNECTIONS clients connected, one more gets too_many_clients and is closed; once one leaves, a new client is served."""
    connections = []
    try:
        for _ in range(control.MAX_CONNECTIONS):
            connection = Raw(daemon.socket)
            connections.append(connection)
            connection.send(request_line(id=1, cmd="info"))
            assert connection.reply()["ok"]  # served, so counted
        extra = Raw(daemon.socket)
        try:
            reply = extra.reply()  # sent as soon as it connects
            assert reply["error"]["code"] == "too_many_clients"
            assert reply["id"] is None
            assert extra.reader.readline() == b""  # then closed
        finally:
            extra.close()
        connections.pop().close()
        assert wait_for(lambda: daemon.request("info"), what="a client served again")["pid"] == daemon.process.pid
    finally:
        for connection in connections:
            connection.close()
    assert b"client_refused" in daemon.log_path.read_bytes()


def test_a_stop_grace_longer_than_a_day_is_refused(daemon):
    """stop with a timeout over 86400 s is an invalid_argument, as stop_timeout is in the config."""
    session = daemon.start_session(py("import time; time.sleep(60)"))
    with pytest.raises(RemoteError) as refused:
        daemon.request("stop", session=session["id"], timeout=1e308)
    assert refused.value.code == "invalid_argument"
    assert daemon.session(session["id"])["status"] in ("queued", "running")


# -- a stalled client, in-process (a stall timeout of a second) ------------------------------


class InProcessDaemon:
    """The daemon's request path (store, ingestor, handlers, control socket) in this test's
    trio run, so the stall timeout can be short; everything else is as in slotd."""

    def __init__(self, root: Path) -> None:
        self.config = Config(
            source=None, state_dir=root / "state", runtime_dir=root / "run", socket=root / "run" / "slotd.sock"
        )
        self.config.state_dir.mkdir(mode=0o700)
        self.config.runtime_dir.mkdir(mode=0o700)
        self.store = Store(self.config.database)
        self.writer = DatabaseWriter(self.store)
        self.readers = ReaderPool(self.config.database)
        self.ingestor = Ingestor(self.writer, self.config.flush_interval, self.config.batch_max_bytes)
        slots = SlotManager(self.config, self.writer, self.ingestor)
        self.commands = Commands(self.config, slots, self.readers, self.writer, self.ingestor, lambda mode: None)

    async def serve(self, nursery: trio.Nursery, stall_timeout: float) -> None:
        await nursery.start(self.ingestor.run)
        sock, _socket_file = await socketfile.bind_socket(self.config.socket, None)
        serve = functools.partial(
            control.serve, sock, self.commands, control.PeerPolicy(None), stall_timeout=stall_timeout
        )
        await nursery.start(serve)

    async def create_running_session(self) -> str:
        session = Session(
            id=str(uuid.uuid4()),
            arrival=0,
            argv=["x"],
            cwd="/",
            status="running",
            slot=1,
            queued_at=utc_now(),
            started_at=utc_now(),
        )
        await self.writer.run(self.store.create_session, session)
        self.ingestor.register(session.id, 0)
        return session.id

    def close(self) -> None:
        self.readers.close()
        self.writer.close()
        self.store.close()


async def test_a_follower_that_stops_reading_is_let_go_and_slotctl_resumes_without_loss(tmp_path):
    """A `slotctl logs -f` whose output is not read is disconnected after the stall timeout (logged); once read again it reconnects from its last row, and every row arrives exactly once."""
    daemon = InProcessDaemon(tmp_path)
    lines = [f"{n:06d}".encode() + b"y" * 1000 + b"\n" for n in range(20_000)]
    try:
        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                await daemon.serve(nursery, stall_timeout=1.0)
                session_id = await daemon.create_running_session()
                daemon.ingestor.append(session_id, "stdout", lines[0])
                await daemon.ingestor.commit_now()
                slotctl = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "supervisor",
                        "--socket",
                        str(daemon.config.socket),
                        "logs",
                        "-f",
                        "--raw",
                        session_id,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                try:
                    # Its follow has begun once the first row has gone out: then the rest.
                    with trio.fail_after(15):
                        while slotctl.poll() is None and not await trio.to_thread.run_sync(
                            _pipe_has_data, slotctl.stdout
                        ):
                            await trio.sleep(0.02)
                    for line in lines[1:]:
                        daemon.ingestor.append(session_id, "stdout", line)
                    await daemon.ingestor.commit_now()
                    with trio.fail_after(15):
                        while not any(entry["event"] == "client_disconnected" for entry in logs):
                            await trio.sleep(0.05)
                    daemon.ingestor.update(session_id, status="completed", slot=None, exit_code=0, ended_at=utc_now())
                    await daemon.ingestor.commit_now()
                    out, err = await trio.to_thread.run_sync(functools.partial(slotctl.communicate, timeout=60))
                finally:
                    if slotctl.poll() is None:
                        slotctl.kill()
                        slotctl.wait()
                nursery.cancel_scope.cancel()
    finally:
        daemon.close()
    assert slotctl.returncode == 0, err
    assert out == b"".join(lines)
    disconnected = [entry for entry in logs if entry["event"] == "client_disconnected"]
    assert "stalled" in disconnected[0]["reason"]


def _pipe_has_data(pipe) -> bool:
    import select

    return bool(select.select([pipe], [], [], 0.05)[0])


# -- stop and kill on a session lost before it started --------------------------------------


def _start_with_shim_stopped(daemon) -> tuple[dict, psutil.Process]:
    """A session whose shim is stopped (SIGSTOP) before it has started the command."""
    for _ in range(20):
        session = daemon.start_session(py("import time; time.sleep(600)"))

        def its_shim() -> psutil.Process | None:
            for child in psutil.Process(daemon.process.pid).children():
                try:
                    if any(session["id"] in part for part in child.cmdline()):
                        return child
                except psutil.NoSuchProcess:
                    pass
            return None

        shim = wait_for(its_shim, interval=0.001, what="the shim")
        shim.send_signal(signal.SIGSTOP)
        spool_dir = daemon.root / "run" / "sessions" / session["id"]
        records = list(spool.SpoolReader(spool_dir, spool.Position(0, 0)).read(1 << 20)) if spool_dir.exists() else []
        if not any(record.kind == spool.START for record, _end in records):
            return session, shim
        shim.send_signal(signal.SIGCONT)  # too late: it had started the command; try again
        daemon.request("stop", session=session["id"])
        daemon.wait_ended(session["id"])
    pytest.skip("the shim always started its command before it could be stopped")


@SMALL_DISK
def test_signalling_a_session_lost_before_its_command_started_answers_at_once(make_daemon):
    """kill and pause on a session whose shim died before starting the command answer invalid_state at once, not after the 2 s wait for a start."""
    with daemon_on_small_disk(make_daemon) as (daemon, state):
        session, shim = _start_with_shim_stopped(daemon)
        # A full disk keeps the session live (its end cannot be committed) while the
        # daemon already knows it is lost: the moment a stop or kill could stall in.
        fill_disk(state / "filler")
        shim.kill()
        wait_for(lambda: b"session_lost" in daemon.log_path.read_bytes(), what="the session lost")
        for command, args in (("kill", {"signal": "USR1"}), ("pause", {})):
            began = time.monotonic()
            with daemon.client() as client:
                reply = next(
                    message for message in client.messages(command, session=session["id"], **args) if "ok" in message
                )
            took = time.monotonic() - began
            assert reply["ok"] is False and reply["error"]["code"] == "invalid_state", reply
            assert took < 1.0, f"{command} took {took:.1f}s"
        (state / "filler").unlink()
        assert daemon.wait_ended(session["id"])["status"] == "lost"
