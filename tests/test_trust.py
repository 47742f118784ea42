"""Directories and files slotd trusts: its own user's, writable by nobody else.

Another user is played by uid 65534 (nobody): files chowned to it, or a process run as
it. Refusals are real daemon starts, checked by exit status and their one line.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from supervisor import fsguard, spool
from supervisor.client import Client, DaemonUnavailable
from supervisor.errors import DaemonExit
from supervisor.spawn import make_session_dir
from supervisor.store import SCHEMA_VERSION
from tests.harness import DEADLINE, DaemonHandle, wait_for
from tests.helpers import alive, py, refusal, request_as, start_refused, system_text

NOBODY = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play another user")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- directories the daemon uses ----------------------------------------------------------


@needs_root
@pytest.mark.parametrize("directory", ["state", "run", "run/sessions"])
@pytest.mark.parametrize("problem", ["owner", "mode"])
def test_a_directory_another_user_owns_or_may_write_is_refused_at_start(
    make_daemon, directory: str, problem: str
) -> None:
    """A state dir, runtime dir or sessions/ that belongs to another user, or that group and others may write, stops slotd with exit 78 naming it, its owner and its mode."""
    daemon = make_daemon(start=False)
    target = daemon.root / directory
    target.mkdir(parents=True, mode=0o700)
    if problem == "owner":
        os.chown(target, NOBODY, NOBODY)
        expected = "owner nobody, mode 0700"
    else:
        os.chmod(target, 0o777)
        expected = "owner root, mode 0777"
    line = refusal(start_refused(daemon), DaemonExit.CONFIG)
    assert str(target) in line
    assert expected in line
    assert not (daemon.root / "state" / "slotd.db").exists()


@needs_root
@pytest.mark.parametrize("sticky", [False, True])
def test_a_parent_others_may_write_is_refused_unless_it_is_sticky(make_daemon, sticky: bool) -> None:
    """A runtime dir created in a directory others may write is refused, except in a sticky one such as /tmp, where the new directory is slotd's own, 0700."""
    daemon = make_daemon(start=False, runtime_dir="open/run")
    shared = daemon.root / "open"
    shared.mkdir()
    os.chmod(shared, 0o1777 if sticky else 0o777)
    if not sticky:
        line = refusal(start_refused(daemon), DaemonExit.CONFIG)
        assert f"{shared} is not safe to use (owner root, mode 0777)" in line
        assert not (shared / "run").exists()
        return
    daemon.settings["socket"] = str(daemon.socket)
    daemon.write_config()
    daemon.start()
    assert os.lstat(shared / "run").st_uid == os.geteuid()
    assert mode(shared / "run") == 0o700
    assert mode(shared / "run" / "sessions") == 0o700


@pytest.mark.parametrize("shape", ["dangling symlink", "file"])
@pytest.mark.parametrize("key", ["state_dir", "runtime_dir"])
def test_a_directory_that_is_a_dangling_link_or_a_file_is_one_line_and_exit_78(
    make_daemon, shape: str, key: str
) -> None:
    """A state or runtime dir that is a dangling symlink or a regular file stops slotd with one line naming it and exit 78."""
    daemon = make_daemon(start=False, **{key: "there"})
    there = daemon.root / "there"
    if shape == "file":
        there.write_text("not a directory\n")
        expected = f"{there} is not a directory"
    else:
        there.symlink_to(daemon.root / "nowhere")
        expected = f"{there} is a symbolic link to {daemon.root / 'nowhere'}, which does not exist"
    line = refusal(start_refused(daemon), DaemonExit.CONFIG)
    assert expected in line
    assert there.is_symlink() or there.read_text() == "not a directory\n"
    assert not (daemon.root / "nowhere").exists()


@needs_root
@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount for a read-only tmpfs")
def test_a_state_dir_that_cannot_be_written_is_one_line_and_exit_78(make_daemon) -> None:
    """A state dir on a read-only file system stops slotd with one line saying so and exit 78."""
    daemon = make_daemon(start=False)
    state = daemon.root / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m,mode=0700", "tmpfs", str(state)], check=True)
    try:
        line = refusal(start_refused(daemon), DaemonExit.CONFIG)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
    assert f"{state} is not writable (read-only file system)" in line


def test_every_file_and_directory_slotd_makes_is_private(daemon) -> None:
    """The state dir, runtime dir and sessions/ are 0700, the socket, lock and database files (with -wal and -shm) 0600, and a session's spec, FIFO and shim log 0600."""
    session = daemon.start_session(py("import time; print('up', flush=True); time.sleep(600)"))
    wait_for(lambda: b"up" in daemon.stdout_bytes(session["id"]), what="the session's output")
    state, run = daemon.root / "state", daemon.root / "run"
    session_dir = run / "sessions" / session["id"]
    assert {
        name: mode(state / name) for name in ("slotd.db", "slotd.db-wal", "slotd.db-shm", "slotd.lock")
    } == dict.fromkeys(("slotd.db", "slotd.db-wal", "slotd.db-shm", "slotd.lock"), 0o600)
    assert [mode(d) for d in (state, run, run / "sessions", session_dir)] == [0o700] * 4
    assert mode(daemon.socket) == 0o600
    assert {
        name: mode(session_dir / name) for name in (spool.SPEC_FILE, spool.STDIN_FIFO, "shim.log")
    } == dict.fromkeys((spool.SPEC_FILE, spool.STDIN_FIFO, "shim.log"), 0o600)


def test_a_session_keeps_the_umask_slotd_was_started_with(daemon) -> None:
    """The daemon's own files are private, but a session's command gets the umask slotd inherited."""
    session = daemon.start_session(py("import os; print(oct(os.umask(0)))"))
    daemon.wait_ended(session["id"])
    inherited = os.umask(0)
    os.umask(inherited)
    assert daemon.stdout_bytes(session["id"]) == f"{oct(inherited)}\n".encode()


def test_database_files_left_readable_are_made_private_at_start(make_daemon) -> None:
    """Database files found with a looser mode (an older slotd's 0644) are set to 0600 at start, and the log says so."""
    daemon = make_daemon()
    daemon.stop()
    files = [daemon.database.with_name("slotd.db" + suffix) for suffix in ("", "-wal", "-shm")]
    for path in files:
        path.touch()
        os.chmod(path, 0o644)
    daemon.start()
    assert [mode(path) for path in files] == [0o600] * 3
    assert b"database_mode_fixed" in daemon.log_path.read_bytes()


def test_a_database_from_a_newer_slotd_is_one_line_naming_both_versions(make_daemon) -> None:
    """A database whose schema version is above this slotd's stops it with exit 78 and one line naming both versions; the database is left as it was."""
    daemon = make_daemon()
    daemon.stop()
    connection = apsw.Connection(str(daemon.database))
    connection.pragma("user_version", SCHEMA_VERSION + 5)
    connection.close()
    line = refusal(start_refused(daemon), DaemonExit.CONFIG)
    assert f"schema version {SCHEMA_VERSION + 5}, newer than this slotd" in line
    assert f"knows ({SCHEMA_VERSION})" in line
    connection = apsw.Connection(str(daemon.database))
    assert connection.pragma("user_version") == SCHEMA_VERSION + 5
    connection.close()


# -- the socket -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["file", "symlink"])
def test_a_socket_path_holding_a_file_or_a_link_is_refused_and_left_alone(make_daemon, shape: str) -> None:
    """With socket pointing at a regular file or a symlink, slotd exits 78 saying it will not replace it, and the file or link is still there."""
    daemon = make_daemon(start=False, socket="taken")
    taken = daemon.root / "taken"
    precious = daemon.root / "precious"
    precious.write_text("keep me\n")
    if shape == "file":
        taken.write_text("keep me too\n")
    else:
        taken.symlink_to(precious)
    line = refusal(start_refused(daemon), DaemonExit.CONFIG)
    assert f"{taken} exists and is not a socket" in line
    assert taken.is_symlink() if shape == "symlink" else taken.read_text() == "keep me too\n"
    assert precious.read_text() == "keep me\n"


def test_a_socket_another_daemon_answers_on_is_never_taken_over(make_daemon) -> None:
    """A second daemon (its own state dir) configured with the first one's socket exits 75 naming the first one's pid, and the first keeps its socket."""
    first = make_daemon()
    second = make_daemon(start=False, socket=str(first.socket))
    line = refusal(start_refused(second), DaemonExit.ALREADY_RUNNING)
    assert f"another slotd (pid {first.process.pid}) answers on socket {first.socket}" in line
    assert first.request("info")["pid"] == first.process.pid
    assert not second.database.exists()


def test_a_socket_nobody_answers_on_is_replaced(make_daemon) -> None:
    """A stale socket (its daemon gone) at the socket path is replaced."""
    daemon = make_daemon(start=False)
    daemon.socket.parent.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(daemon.socket))
    stale.close()
    daemon.start()
    assert daemon.request("info")["pid"] == daemon.process.pid


# -- socket_group ---------------------------------------------------------------------------


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A directory in /tmp that others may pass through (pytest's own base is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="slotd-trust-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def empty_group() -> grp.struct_group:
    """A group of this system with no members, and nobody's group but root's."""
    for group in sorted(grp.getgrall(), key=lambda g: g.gr_gid):
        if group.gr_gid not in (0, NOBODY) and not group.gr_mem:
            return group
    pytest.skip("no group without members to use as socket_group")


def answers(path: Path) -> bool:
    try:
        with Client(path, timeout=DEADLINE) as client:
            return bool(client.request("info"))
    except (OSError, DaemonUnavailable):
        return False


@needs_root
def test_socket_group_members_reach_the_socket_in_the_default_layout(open_root: Path) -> None:
    """With socket_group and the runtime dir inside the state dir, a process of that group reaches the socket and is served; others cannot even reach it, and sessions/ and the database stay private."""
    group = empty_group()
    # The built-in layout when there is no XDG or systemd runtime directory: <state_dir>/run.
    daemon = DaemonHandle(open_root, {"socket_group": group.gr_name, "runtime_dir": "state/run"})
    socket_path = open_root / "state" / "run" / "slotd.sock"
    try:
        daemon.start(wait=False)
        wait_for(lambda: answers(socket_path) or daemon.process.poll() is not None, what="the daemon to answer")
        assert daemon.process.poll() is None, daemon.log_path.read_text()
        reply = request_as(socket_path, NOBODY, group.gr_gid)
        assert json.loads(reply)["result"]["pid"] == daemon.process.pid, reply
        assert request_as(socket_path, NOBODY, NOBODY) == b"connect failed: Permission denied"
        for directory in (open_root / "state", open_root / "state" / "run"):
            assert (mode(directory), os.stat(directory).st_gid) == (0o710, group.gr_gid)
        assert (mode(socket_path), os.stat(socket_path).st_gid) == (0o660, group.gr_gid)
        assert mode(open_root / "state" / "run" / "sessions") == 0o700
        assert mode(open_root / "state" / "slotd.db") == 0o600
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.terminate()
            daemon.process.wait(DEADLINE)


@needs_root
def test_socket_group_with_a_directory_the_group_cannot_pass_is_refused_naming_it(open_root: Path) -> None:
    """With socket_group set and a directory on the socket's way closed to the group, slotd exits 78 naming that directory and what to change."""
    group = empty_group()
    closed = open_root / "closed"
    closed.mkdir(mode=0o700)
    daemon = DaemonHandle(
        open_root, {"socket_group": group.gr_name, "state_dir": "closed/state", "runtime_dir": "closed/run"}
    )
    line = refusal(start_refused(daemon), DaemonExit.CONFIG)
    assert f"socket_group '{group.gr_name}' cannot reach the socket: {closed} (owner root, mode 0700" in line
    assert "o+x" in line


# -- session directories and the shim -------------------------------------------------------


def write_spec(directory: Path, argv: list[str]) -> None:
    spec = {
        "argv": argv,
        "cwd": "/",
        "env": {},
        "flush_interval": 0.05,
        "max_chunk_bytes": 65536,
        "segment_bytes": 1 << 20,
        "max_segments": 4,
        "stop_timeout": 2.0,
    }
    (directory / spool.SPEC_FILE).write_text(json.dumps(spec))


def run_shim(session_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "supervisor.shim", str(session_dir)], capture_output=True, text=True, timeout=DEADLINE
    )


def a_session_dir(parent: Path, marker: Path) -> Path:
    """A session directory whose spec would create marker, with its FIFO."""
    session_dir = parent / "session"
    session_dir.mkdir(mode=0o700)
    write_spec(session_dir, py(f"open({str(marker)!r}, 'w').close()"))
    os.mkfifo(session_dir / spool.STDIN_FIFO, 0o600)
    return session_dir


@needs_root
@pytest.mark.parametrize(
    "swap",
    [
        "directory owned by another user",
        "spec owned by another user",
        "spec writable by others",
        "spec is a link",
        "directory is another user's link",
        "parent writable by others",
    ],
)
def test_the_shim_runs_nothing_from_a_directory_or_spec_someone_else_controls(tmp_path: Path, swap: str) -> None:
    """A shim whose session directory, spec or a parent another user controls (or a link put in their place) runs nothing and says why in one line."""
    marker = tmp_path / "ran"
    parent = tmp_path / "sessions"
    parent.mkdir(mode=0o700)
    session_dir = a_session_dir(parent, marker)
    target = session_dir
    if swap == "directory owned by another user":
        os.chown(session_dir, NOBODY, NOBODY)
    elif swap == "spec owned by another user":
        os.chown(session_dir / spool.SPEC_FILE, NOBODY, NOBODY)
    elif swap == "spec writable by others":
        os.chmod(session_dir / spool.SPEC_FILE, 0o666)
    elif swap == "spec is a link":
        elsewhere = tmp_path / "their-spec.json"
        (session_dir / spool.SPEC_FILE).rename(elsewhere)
        (session_dir / spool.SPEC_FILE).symlink_to(elsewhere)
    elif swap == "directory is another user's link":
        target = parent / "link"
        target.symlink_to(session_dir)
        os.chown(target, NOBODY, NOBODY, follow_symlinks=False)
    else:
        os.chmod(parent, 0o777)
    result = run_shim(target)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("shim: refusing to run from ")
    assert not marker.exists()
    assert spool.list_segments(session_dir) == []


@needs_root
def test_the_shim_refuses_an_input_fifo_another_user_owns(tmp_path: Path) -> None:
    """A shim whose stdin FIFO belongs to another user records SPAWN_FAILED and runs nothing."""
    marker = tmp_path / "ran"
    session_dir = a_session_dir(tmp_path, marker)
    os.chown(session_dir / spool.STDIN_FIFO, NOBODY, NOBODY)
    result = run_shim(session_dir)
    assert result.returncode == 0
    assert "Traceback" not in result.stderr
    records, _ = spool.decode(spool.segment_path(session_dir, 0).read_bytes())
    assert [r.kind for r in records] == [spool.SPAWN_FAILED]
    assert json.loads(records[0].data)["reason"] == "input FIFO not usable"
    assert not marker.exists()


@needs_root
def test_a_session_directory_name_taken_by_a_link_is_not_followed(tmp_path: Path) -> None:
    """When a session's name in sessions/ is already a link to another user's directory, the daemon makes its own directory and writes nothing through the link."""
    sessions = tmp_path / "sessions"
    sessions.mkdir(mode=0o700)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / spool.SPEC_FILE).write_text("their spec")
    os.chown(theirs, NOBODY, NOBODY)
    (sessions / "abc").symlink_to(theirs)
    fd = os.open(sessions, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(make_session_dir(fd, "abc", {"argv": ["true"]}))
    finally:
        os.close(fd)
    assert not (sessions / "abc").is_symlink()
    assert os.lstat(sessions / "abc").st_uid == os.geteuid()
    assert json.loads((sessions / "abc" / spool.SPEC_FILE).read_text()) == {"argv": ["true"]}
    assert sorted(os.listdir(theirs)) == [spool.SPEC_FILE]
    assert (theirs / spool.SPEC_FILE).read_text() == "their spec"


@needs_root
def test_a_spool_directory_handed_to_another_user_while_the_daemon_was_down_is_not_trusted(make_daemon) -> None:
    """A live session whose spool directory belongs to another user at the next start is lost, with the reason, and its processes are ended, not re-attached."""
    daemon = make_daemon()
    session = daemon.start_session(py("import time; print('up', flush=True); time.sleep(600)"))
    wait_for(lambda: b"up" in daemon.stdout_bytes(session["id"]), what="the session's output")
    recorded = daemon.session(session["id"])
    daemon.kill9()
    spool_dir = daemon.root / "run" / "sessions" / session["id"]
    os.chown(spool_dir, NOBODY, NOBODY)
    daemon.start()
    ended = daemon.wait_ended(session["id"])
    assert ended["status"] == "lost"
    assert ended["reason"].startswith(
        f"its spool directory is not trusted: directory {spool_dir} is not safe to use (owner nobody"
    )
    assert "not trusted" in system_text(daemon.database, session["id"])
    wait_for(
        lambda: not alive(recorded["pid"]) and not alive(recorded["shim_pid"]), what="the session's processes to end"
    )


def test_a_spool_directory_row_naming_another_directory_is_neither_read_nor_removed(make_daemon) -> None:
    """A live session whose row was edited (while the daemon was down) to name another directory of ours as its spool is lost at the next start, and that directory is left as it was."""
    daemon = make_daemon()
    session = daemon.start_session(py("import time; print('up', flush=True); time.sleep(600)"))
    wait_for(lambda: b"up" in daemon.stdout_bytes(session["id"]), what="the session's output")
    recorded = daemon.session(session["id"])
    daemon.kill9()
    precious = daemon.root / "precious"
    precious.mkdir(mode=0o700)
    (precious / "keep").write_text("mine\n")
    store = apsw.Connection(str(daemon.database))
    store.execute("UPDATE sessions SET spool_dir = ? WHERE id = ?", (str(precious), session["id"]))
    store.close()
    daemon.start()
    ended = daemon.wait_ended(session["id"])
    assert ended["status"] == "lost"
    assert (
        ended["reason"]
        == f"its spool directory is not trusted: {precious} is not where slotd keeps its spool ({daemon.root / 'run' / 'sessions' / session['id']})"
    )
    assert (precious / "keep").read_text() == "mine\n"
    wait_for(
        lambda: not alive(recorded["pid"]) and not alive(recorded["shim_pid"]), what="the session's processes to end"
    )


def test_walk_names_the_missing_part_and_checks_links_on_the_way(tmp_path: Path) -> None:
    """walk follows a link on the way to the real directory and returns the names still to create."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real)
    assert fsguard.walk(tmp_path / "via" / "a" / "b") == (real / "a", ["b"])
    assert fsguard.walk(tmp_path / "via") == (real, [])


@pytest.mark.parametrize("unit", ["slotd.service", "system/slotd.service"])
def test_the_systemd_units_do_not_restart_on_a_refusal_to_start(unit: str) -> None:
    """Both units list 78 and 65, the statuses of every refusal an operator must act on, in RestartPreventExitStatus."""
    text = (Path(__file__).parent.parent / "systemd" / unit).read_text()
    settings = [
        line.split("=", 1)[1].split() for line in text.splitlines() if line.startswith("RestartPreventExitStatus=")
    ]
    assert settings and {str(DaemonExit.CONFIG), str(DaemonExit.DATABASE)} <= set(settings[-1])


# -- found in review ------------------------------------------------------------------------


@needs_root
def test_a_dotdot_after_another_users_link_is_not_a_way_around_the_checks(make_daemon) -> None:
    """A state dir written as link/../state, where the link belongs to another user, is refused: '..' is taken after the link, as the kernel takes it, not dropped with it."""
    daemon = make_daemon(start=False, state_dir="link/../state")
    evil = daemon.root / "evil"
    (evil / "sub").mkdir(parents=True)
    os.chmod(evil, 0o777)
    os.chown(evil, NOBODY, NOBODY)
    (daemon.root / "link").symlink_to(evil / "sub")
    os.lchown(daemon.root / "link", NOBODY, NOBODY)
    line = refusal(start_refused(daemon), DaemonExit.CONFIG)
    assert f"{daemon.root / 'link'} is not safe to use: it is a symbolic link of nobody" in line
    assert not (evil / "state").exists()


def test_a_dotdot_after_a_link_of_ours_leads_where_the_kernel_goes(tmp_path: Path) -> None:
    """walk resolves via/.. from the link's target, as the kernel does."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "via").symlink_to(tmp_path / "a" / "b")
    assert fsguard.walk(tmp_path / "via" / ".." / "new") == (tmp_path / "a" / "new", [])


def test_two_daemons_on_one_runtime_dir_are_refused(make_daemon) -> None:
    """A second daemon (its own state dir and socket) configured with a live daemon's runtime dir exits 75 and leaves the first one's sessions alone."""
    first = make_daemon()
    session = first.start_session(py("import time; time.sleep(60)"))
    first.wait_status(session["id"], "running")
    second = make_daemon(start=False, runtime_dir=str(first.root / "run"), socket=str(first.root / "second.sock"))
    line = refusal(start_refused(second), DaemonExit.ALREADY_RUNNING)
    assert (
        f"another slotd (pid {first.process.pid}) is already running on runtime directory {first.root / 'run'}" in line
    )
    assert (first.root / "run" / "sessions" / session["id"] / spool.STDIN_FIFO).exists()
    assert first.session(session["id"])["status"] == "running"


def test_a_lock_file_left_readable_is_made_private(make_daemon) -> None:
    """A slotd.lock left 0666 is 0600 again once slotd has started."""
    daemon = make_daemon(start=False)
    state = daemon.root / "state"
    state.mkdir(mode=0o700)
    (state / "slotd.lock").touch()
    os.chmod(state / "slotd.lock", 0o666)
    daemon.start()
    assert mode(state / "slotd.lock") == 0o600
    assert mode(daemon.root / "run" / "slotd.lock") == 0o600


def test_a_listener_that_answers_with_garbage_is_named_not_a_traceback(make_daemon) -> None:
    """Something else listening on the socket path, answering the probe with deeply nested JSON, makes slotd exit 75 naming its pid, in one line."""
    daemon = make_daemon(start=False)
    daemon.socket.parent.mkdir(mode=0o700)
    listener = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import socket, sys\n"
                "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); print('ready', flush=True)\n"
                "while True:\n"
                "    c, _ = s.accept(); c.recv(100); c.sendall(b'[' * 200000 + b'\\n'); c.close()\n"
            ),
            str(daemon.socket),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline() == b"ready\n"
        line = refusal(start_refused(daemon), DaemonExit.ALREADY_RUNNING)
        assert f"another slotd (pid {listener.pid}) answers on socket {daemon.socket}" in line
    finally:
        listener.kill()
        listener.wait(10)
        assert listener.stdout is not None
        listener.stdout.close()
