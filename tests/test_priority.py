"""Sessions run at a lower CPU priority than the daemon: their commands' nice values
(the process's own and its scheduler autogroup's), configured and per session."""

from __future__ import annotations

import json
import os
import pwd
import re
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest
import trio

from supervisor import linux
from supervisor.client import RemoteError
from supervisor.database import BACKGROUND_NICE, LATE_AFTER, BackgroundThread, Yielding
from supervisor.errors import CliExit
from supervisor.model import utc_now
from supervisor.store.schema import migrate
from tests.harness import DaemonHandle, wait_for
from tests.helpers import py

SLEEP = ["sleep", "600"]
HAS_AUTOGROUPS = Path("/proc/self/autogroup").exists()
# The schema version whose migration added sessions' nice column.
NICE_VERSION = 8


def running_pid(daemon: DaemonHandle, session_id: str) -> int:
    return wait_for(lambda: daemon.session(session_id)["pid"], what=f"session {session_id} running its command")


def command_nice(pid: int) -> tuple[int | None, int | None]:
    """The command's nice value and its autogroup's (None where there are no autogroups)."""
    return linux.nice_value(pid), linux.autogroup_nice(pid) if HAS_AUTOGROUPS else None


def expected(nice: int) -> tuple[int, int | None]:
    return nice, nice if HAS_AUTOGROUPS else None


def test_a_session_runs_at_the_configured_nice_and_the_daemon_and_shim_keep_theirs(
    make_daemon: Callable[..., DaemonHandle],
) -> None:
    """With session_nice = 7 a session's command and its autogroup run at nice 7, while the daemon and the shim keep their own."""
    daemon = make_daemon(session_nice=7)
    session = daemon.start_session(SLEEP)
    pid = running_pid(daemon, session["id"])
    assert command_nice(pid) == expected(7)
    shown = daemon.session(session["id"])
    assert shown["nice"] == 7
    own = command_nice(os.getpid())
    assert command_nice(daemon.process.pid) == own
    assert linux.nice_value(shown["shim_pid"]) == own[0]
    if HAS_AUTOGROUPS:
        # The shim leads a session of its own (setsid), so it is in a fresh autogroup,
        # which the kernel starts at nice 0, whatever the daemon's is (a daemon that never
        # left the boot session has none to show): it must not have been lowered.
        assert linux.autogroup_nice(shown["shim_pid"]) == 0


def test_the_default_session_nice_is_10_and_what_the_command_starts_inherits_it(
    make_daemon: Callable[..., DaemonHandle],
) -> None:
    """Without configuration a session runs at nice 10, and so does a process its command starts."""
    daemon = make_daemon(start=False)
    del daemon.settings["session_nice"]  # the tests' daemons set one: this one keeps the built-in default
    daemon.write_config()
    daemon.start()
    session = daemon.start_session(["sh", "-c", "sleep 600 & echo $!; wait"])
    pid = running_pid(daemon, session["id"])
    child = int(wait_for(lambda: daemon.stdout_bytes(session["id"]).strip(), what="the child's pid"))
    assert command_nice(pid) == expected(10)
    assert command_nice(child) == expected(10)
    assert daemon.session(session["id"])["nice"] == 10


def test_slotctl_start_nice_overrides_the_configured_value_and_show_says_so(
    make_daemon: Callable[..., DaemonHandle],
) -> None:
    """`slotctl start --nice 3` runs that session's command at nice 3 (the next one at session_nice), and `show` prints it."""
    daemon = make_daemon(session_nice=12)
    started = daemon.cli("start", "-q", "--nice", "3", "--", *SLEEP)
    assert started.returncode == 0, started.stderr
    session_id = started.stdout.decode().strip()
    other = daemon.start_session(SLEEP)
    assert command_nice(running_pid(daemon, session_id)) == expected(3)
    assert command_nice(running_pid(daemon, other["id"])) == expected(12)
    shown = daemon.cli("show", session_id)
    assert re.search(r"^nice: +3$", shown.stdout.decode(), re.MULTILINE)


def test_a_queued_session_keeps_its_nice_until_it_starts(make_daemon: Callable[..., DaemonHandle]) -> None:
    """A session queued with nice 4 behind a busy slot runs at nice 4 when it gets the slot."""
    daemon = make_daemon(slots=1)
    first = daemon.start_session(SLEEP)
    queued = daemon.start_session(SLEEP, nice=4)
    assert queued["status"] == "queued" and queued["nice"] == 4
    daemon.request("kill", session=first["id"], signal="SIGKILL")
    assert command_nice(running_pid(daemon, queued["id"])) == expected(4)


@pytest.mark.parametrize("value", [-1, 20, 2.5, "5", True], ids=["negative", "too-high", "fraction", "string", "bool"])
def test_start_refuses_a_nice_outside_0_to_19_and_queues_nothing(shared_daemon: DaemonHandle, value: object) -> None:
    """A start whose nice is not an integer from 0 to 19 is refused with invalid_argument naming nice, and no session is made."""
    before = shared_daemon.request("ps", all=True)
    with pytest.raises(RemoteError) as refused:
        shared_daemon.start_session(SLEEP, nice=value)
    assert refused.value.code == "invalid_argument"
    assert "'nice'" in refused.value.message and "from 0 to 19" in refused.value.message
    assert shared_daemon.request("ps", all=True) == before


def test_slotctl_refuses_a_bad_nice_with_the_daemons_reason(shared_daemon: DaemonHandle) -> None:
    """`slotctl start --nice 20` exits non-zero saying nice must be from 0 to 19, and nothing starts."""
    before = shared_daemon.request("ps", all=True)
    result = shared_daemon.cli("start", "--nice", "20", "--", *SLEEP)
    assert result.returncode == CliExit.REFUSED
    assert "'nice'" in result.stderr.decode() and "from 0 to 19" in result.stderr.decode()
    assert shared_daemon.request("ps", all=True) == before


def test_a_session_queued_before_sessions_had_a_nice_runs_at_the_configured_one(
    make_daemon: Callable[..., DaemonHandle],
) -> None:
    """A session queued in a database from before the nice column runs at session_nice once the new daemon starts it."""
    daemon = make_daemon(start=False, session_nice=6)
    daemon.database.parent.mkdir(mode=0o700)
    connection = apsw.Connection(str(daemon.database))
    migrate(connection, to=NICE_VERSION - 1)
    connection.execute(
        "INSERT INTO sessions (id, arrival, status, argv, cwd, queued_at) VALUES (?, 1, 'queued', ?, ?, ?)",
        ("0ld5e55i-0000-4000-8000-000000000000", json.dumps(SLEEP), str(daemon.root), utc_now()),
    )
    connection.close()
    daemon.start()
    assert command_nice(running_pid(daemon, "0ld5e55i")) == expected(6)
    assert daemon.session("0ld5e55i")["nice"] is None


def test_a_tty_session_runs_at_its_nice_on_its_controlling_terminal(make_daemon: Callable[..., DaemonHandle]) -> None:
    """On a pseudo-terminal the command both takes it as its controlling terminal and lowers its priority before exec."""
    daemon = make_daemon(session_nice=5)
    session = daemon.start_session(SLEEP, tty=True)
    pid = running_pid(daemon, session["id"])
    assert command_nice(pid) == expected(5)
    # /proc/PID/stat after the command's name: state, ppid, pgrp, session, tty_nr.
    tty_nr = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[4])
    assert tty_nr != 0, "the command has no controlling terminal"


def thread_nices(pid: int) -> dict[str, int]:
    """The process's threads by name (comm), each with its nice value."""
    nices = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue  # ended meanwhile
        nices[name] = int(stat.rpartition(")")[2].split()[16])
    return nices


def thread_policies(pid: int) -> dict[str, int]:
    """Each named thread's scheduling policy."""
    policies = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            policies[name] = os.sched_getscheduler(int(tid))
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
    return policies


def test_the_daemons_commits_and_checkpoints_yield_the_cpu_to_its_event_loop(daemon: DaemonHandle) -> None:
    """The daemon's writer and checkpoint threads run as SCHED_IDLE (with BACKGROUND_NICE above its loop to fall back on), its loop as before."""
    session = daemon.start_session(py("print('x' * 1000)"))
    daemon.wait_ended(session["id"])
    nices = wait_for(
        lambda: (found := thread_nices(daemon.process.pid)).keys() >= {"slotd-writer", "slotd-checkpt"} and found,
        what="the daemon's writer and checkpoint threads",
    )
    own = linux.nice_value(os.getpid())
    assert own is not None
    assert linux.nice_value(daemon.process.pid) == own
    assert nices["slotd-writer"] == nices["slotd-checkpt"] == min(19, own + BACKGROUND_NICE)
    policies = thread_policies(daemon.process.pid)
    assert policies["slotd-writer"] == policies["slotd-checkpt"] == os.SCHED_IDLE
    assert os.sched_getscheduler(daemon.process.pid) == os.SCHED_OTHER


def own_policy() -> tuple[int, int]:
    """The calling thread's scheduling policy and nice value."""
    tid = threading.get_native_id()
    return os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)


async def test_a_background_thread_that_falls_behind_runs_as_a_normal_thread_until_it_has_caught_up() -> None:
    """A call that waited over LATE_AFTER to start runs SCHED_OTHER at BACKGROUND_NICE above the caller; after catch_up, SCHED_IDLE again."""
    thread = BackgroundThread("test-yielding", catch_up=0.5)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    try:
        assert await thread.run(own_policy) == (os.SCHED_IDLE, min(19, base + BACKGROUND_NICE))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(thread.run, time.sleep, 2 * LATE_AFTER)
            while thread.stalled_for() == 0:
                await trio.sleep(0.01)
            late = await thread.run(own_policy)  # queued behind the sleep
        assert late == (os.SCHED_OTHER, min(19, base + BACKGROUND_NICE))
        assert await thread.run(own_policy) == (os.SCHED_OTHER, min(19, base + BACKGROUND_NICE))
        await trio.sleep(0.5)
        assert await thread.run(own_policy) == (os.SCHED_IDLE, min(19, base + BACKGROUND_NICE))
    finally:
        thread.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_background_thread_that_could_not_leave_sched_idle_never_enters_it() -> None:
    """Without CAP_SYS_NICE or RLIMIT_NICE a background thread stays SCHED_OTHER, even after falling behind and catching up."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            resource.setrlimit(resource.RLIMIT_NICE, (0, 0))
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            seen: list[int] = []

            def work() -> None:
                yielding = Yielding("test-no-idle", catch_up=0.0)
                seen.append(own_policy()[0])
                yielding.starting(2 * LATE_AFTER, 0.0)  # late: would leave SCHED_IDLE
                seen.append(own_policy()[0])
                yielding.starting(0.0, 1.0)  # caught up: would go back to it
                seen.append(own_policy()[0])

            thread = threading.Thread(target=work)
            thread.start()
            thread.join()
            os.write(write_end, json.dumps(seen).encode())
        except BaseException as error:
            os.write(write_end, json.dumps(repr(error)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        seen = json.loads(reader.read())
    os.waitpid(child, 0)
    assert seen == [os.SCHED_OTHER] * 3
