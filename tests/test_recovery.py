"""Crash recovery: kill -9 the daemon, restart it, lose nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import apsw
import psutil
import pytest

from supervisor.commands.transcripts import row_message
from supervisor.processes import ProcessRef, kill_process, signal_group
from supervisor.processes import alive as alive_ref
from tests.harness import wait_for
from tests.helpers import (
    alive,
    assert_numbers_exactly_once,
    py,
    start_refused,
    system_text,
    write_lock_held,
)

# Prints numbered lines as fast as it can for about `seconds` (or until the file `gate`
# exists), then exits with `code`.
NUMBERS = (
    "import os, sys, time\n"
    "seconds, code = float(sys.argv[1]), int(sys.argv[2])\n"
    "gate = sys.argv[3] if len(sys.argv) > 3 else None\n"
    "end = time.monotonic() + seconds\n"
    "i = 0\n"
    "while not os.path.exists(gate) if gate else time.monotonic() < end:\n"
    "    sys.stdout.write(''.join(f'{n}\\n' for n in range(i, i + 100))); i += 100\n"
    "    sys.stdout.flush()\n"
    "print('done', i, flush=True)\n"
    "sys.exit(code)\n"
)


# These sessions write as fast as they can, and while no daemon runs their shims spool
# up to 256 MiB each: on a slow machine a transcript can pass retention's per-session cap,
# whose truncation drops middle rows by design. Every line once is what these tests
# check, so their daemons keep every row.
KEEP_EVERY_ROW = {"retention": {"max_session_bytes": 0}}


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(**KEEP_EVERY_ROW)


def numbers(seconds: float, code: int = 0) -> list[str]:
    return [*py(NUMBERS), str(seconds), str(code)]


def numbers_until(gate: Path, code: int = 0) -> list[str]:
    """NUMBERS printing until the test opens the gate (creates the file)."""
    return [*py(NUMBERS), "0", str(code), str(gate)]


def wait_flowing(daemon, session_id: str, more: int = 100_000) -> None:
    """Wait until a session's stored transcript has grown by `more` bytes from now."""
    now = daemon.session(session_id)["transcript"]["bytes"]
    wait_for(lambda: daemon.session(session_id)["transcript"]["bytes"] > now + more, what=f"{more} more bytes stored")


def edit_session(daemon, session_id: str, **columns) -> None:
    """Change a session's row behind the daemon's back (it must be stopped)."""
    connection = apsw.Connection(str(daemon.database))
    connection.set_busy_timeout(5000)
    assignments = ", ".join(f"{name} = ?" for name in columns)
    with connection:
        connection.execute(f"UPDATE sessions SET {assignments} WHERE id = ?", (*columns.values(), session_id))
    connection.close()


def test_sessions_survive_a_sigkilled_daemon_with_every_line_once(daemon):
    """Three sessions printing at full speed keep running through a daemon SIGKILL; after the restart their transcripts hold every number exactly once."""
    gate = daemon.root / "gate"
    sessions = [daemon.start_session(numbers_until(gate, code)) for code in (0, 1, 2)]
    for session in sessions:
        wait_flowing(daemon, session["id"])
    shims = [daemon.session(s["id"])["shim_pid"] for s in sessions]
    daemon.kill9()
    assert all(alive(pid) for pid in shims)
    time.sleep(0.5)  # the sessions keep writing while no daemon is there
    daemon.start()
    for session in sessions:
        assert daemon.session(session["id"])["status"] == "running"
    for session in sessions:
        wait_flowing(daemon, session["id"])  # and ingested live after the restart
    gate.touch()
    ended = [daemon.wait_ended(s["id"], timeout=30) for s in sessions]
    assert [(s["status"], s["exit_code"]) for s in ended] == [("completed", 0), ("failed", 1), ("failed", 2)]
    for session in sessions:
        assert_numbers_exactly_once(daemon.database, session["id"])
        human = daemon.cli("logs", "--stream", "system", session["id"]).stdout
        assert b"re-attached after restart" in human


def test_a_session_that_ends_while_the_daemon_is_down_keeps_its_exit_code_and_output(daemon):
    """A session exiting with code 7 while the daemon is down is recorded failed with code 7 and its full output."""
    session = daemon.start_session(numbers(1.0, 7))
    wait_for(lambda: daemon.session(session["id"])["pid"], what="command started")
    shim = daemon.session(session["id"])["shim_pid"]
    daemon.kill9()
    wait_for(lambda: not alive(shim), what="the shim to finish")
    daemon.start()
    ended = daemon.session(session["id"])  # settled before the daemon reports ready
    assert (ended["status"], ended["exit_code"]) == ("failed", 7)
    assert_numbers_exactly_once(daemon.database, session["id"])


def test_a_session_whose_shim_was_killed_while_down_is_lost_and_leaves_nothing(daemon):
    """A session whose shim is SIGKILLed while the daemon is down ends lost with a reason, and no process of it remains."""
    session = daemon.start_session(py("import time\nwhile True:\n    print('tick', flush=True); time.sleep(0.05)"))
    wait_for(lambda: daemon.session(session["id"])["pid"], what="command started")
    running = daemon.session(session["id"])
    daemon.kill9()
    os.kill(running["shim_pid"], signal.SIGKILL)
    wait_for(lambda: not alive(running["shim_pid"]), what="shim gone")
    daemon.start()
    lost = daemon.wait_ended(session["id"])
    assert lost["status"] == "lost"
    assert lost["reason"]
    wait_for(lambda: not alive(running["pid"]), what="the command ended too")


def test_a_reused_pid_is_not_touched_and_the_session_is_lost(daemon):
    """A recorded PID that now names an unrelated process (other create time) is left alone, and the session is lost."""
    session = daemon.start_session(py("import time\nwhile True:\n    print('tick', flush=True); time.sleep(0.05)"))
    wait_for(lambda: daemon.session(session["id"])["pid"], what="command started")
    running = daemon.session(session["id"])
    daemon.kill9()
    for pid in (running["shim_pid"], running["pid"]):
        os.kill(pid, signal.SIGKILL)
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        # As if both PIDs had been reused: the numbers now name the unrelated process.
        edit_session(daemon, session["id"], shim_pid=unrelated.pid, pid=unrelated.pid)
        daemon.start()
        lost = daemon.wait_ended(session["id"])
        assert lost["status"] == "lost"
        assert unrelated.poll() is None
        assert psutil.Process(unrelated.pid).status() != psutil.STATUS_STOPPED
    finally:
        unrelated.kill()
        unrelated.wait()


def test_a_changed_boot_id_marks_every_live_session_lost(daemon):
    """After a reboot (a different boot id), every session recorded live is lost with reason 'machine rebooted'."""
    sessions = [daemon.start_session(py("import time; time.sleep(600)")) for _ in range(2)]
    for session in sessions:
        wait_for(lambda s=session: daemon.session(s["id"])["pid"], what="command started")
    daemon.kill9()
    for session in sessions:
        edit_session(daemon, session["id"], boot_id="00000000-0000-0000-0000-000000000000")
    daemon.start()
    for session in sessions:
        lost = daemon.session(session["id"])
        assert (lost["status"], lost["reason"]) == ("lost", "machine rebooted")


def test_a_session_waiting_for_input_keeps_waiting_across_a_restart(daemon):
    """A session blocked reading stdin does not see EOF when the daemon restarts, and gets the input sent afterwards."""
    code = "import sys\nprint('ready', flush=True)\nline = sys.stdin.readline()\nprint('got', repr(line), flush=True)"
    session = daemon.start_session(py(code))
    wait_for(lambda: b"ready" in daemon.stdout_bytes(session["id"]), what="ready")
    daemon.kill9()
    time.sleep(0.3)
    daemon.start()
    assert daemon.session(session["id"])["status"] == "running"
    daemon.request("send", session=session["id"], data="after restart\n")
    assert daemon.wait_ended(session["id"])["status"] == "completed"
    assert daemon.stdout_bytes(session["id"]) == b"ready\ngot 'after restart\\n'\n"


def test_sigterm_with_keep_loses_no_line_and_the_next_start_reattaches(daemon):
    """SIGTERM with on_shutdown = keep leaves sessions running; the next daemon re-attaches and every line is stored once."""
    gate = daemon.root / "gate"
    session = daemon.start_session(numbers_until(gate))
    wait_flowing(daemon, session["id"], more=50_000)
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(30) == 0
    reader = daemon.reader()
    try:
        assert alive(reader.get_session(session["id"]).shim_pid)
    finally:
        reader.close()
    daemon.start()
    wait_flowing(daemon, session["id"], more=50_000)
    gate.touch()
    assert daemon.wait_ended(session["id"], timeout=30)["status"] == "completed"
    assert_numbers_exactly_once(daemon.database, session["id"])


def test_sigterm_with_stop_kills_every_session(make_daemon):
    """SIGTERM with on_shutdown = stop stops every session and records it killed."""
    daemon = make_daemon(on_shutdown="stop")
    sessions = [daemon.start_session(py("import time; time.sleep(600)")) for _ in range(3)]
    pids = [wait_for(lambda s=s: daemon.session(s["id"])["pid"], what="started") for s in sessions]
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(30) == 0
    reader = daemon.reader()
    try:
        assert [reader.get_session(s["id"]).status for s in sessions] == ["killed"] * 3
    finally:
        reader.close()
    assert not any(alive(pid) for pid in pids)


def test_logs_follow_across_a_restart_prints_every_line_once(daemon):
    """slotctl logs -f started before a daemon restart reconnects and prints every line exactly once."""
    code = "import time\nfor i in range(60):\n    print(i, flush=True); time.sleep(0.05)"
    session = daemon.start_session(py(code))
    follower = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--socket", str(daemon.socket), "logs", "-f", "--raw", session["id"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: daemon.session(session["id"])["transcript"]["rows"] > 10, what="some lines")
        daemon.kill9()
        time.sleep(0.5)
        daemon.start()
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, err
    assert out == b"".join(f"{i}\n".encode() for i in range(60))


# Prints a numbered line every 10 ms until the file argv[1] exists.
TICKS_UNTIL = (
    "import os, sys, time\n"
    "i = 0\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    print(i, flush=True); i += 1; time.sleep(0.01)\n"
)


def test_rows_followed_before_their_commit_are_stored_the_same_after_a_sigkill(daemon, tmp_path):
    """logs -f prints rows the daemon read but could not commit; after a SIGKILL and restart it reconnects, and what it printed equals the committed transcript, row for row, none twice."""
    gate = tmp_path / "gate"
    session_id = daemon.start_session([*py(TICKS_UNTIL), str(gate)])["id"]
    follower = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--socket", str(daemon.socket), "logs", "-f", "--json", session_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    printed: list[dict] = []

    def collect() -> None:
        assert follower.stdout is not None
        printed.extend(json.loads(line) for line in follower.stdout)

    collecting = threading.Thread(target=collect, daemon=True)
    collecting.start()
    try:
        wait_for(lambda: len(printed) > 5, what="the first rows")
        with write_lock_held(daemon.database):
            committed = last_committed_seq(daemon, session_id)
            # Read, sent and printed, but not committed: the lock holds every commit back.
            wait_for(lambda: printed[-1]["seq"] > committed + 5, what="rows printed before their commit")
            daemon.kill9()
        assert last_committed_seq(daemon, session_id) == committed
        printed_before_restart = len(printed)
        daemon.start()
        wait_for(lambda: len(printed) > printed_before_restart + 5, what="rows after the restart")
        gate.touch()
        follower.wait(60)  # not communicate(): the thread reads stdout
        collecting.join(10)
        assert follower.stderr is not None
        err = follower.stderr.read()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
        for pipe in (follower.stdout, follower.stderr):
            if pipe is not None:
                pipe.close()
    assert follower.returncode == 0, err
    reader = daemon.reader()
    try:
        stored = [row_message(row) for row in reader.iter_transcript(session_id)]
    finally:
        reader.close()
    assert [row["seq"] for row in printed] == sorted({row["seq"] for row in printed}), "a row printed twice"
    assert printed == stored


def last_committed_seq(daemon, session_id: str) -> int:
    reader = daemon.reader()
    try:
        return reader.last_seq(session_id)
    finally:
        reader.close()


def assert_processes_match_statuses(daemon) -> None:
    """A session recorded live has its shim running; one recorded ended has none."""
    for session in daemon.stored_sessions():
        shim_running = alive_ref(ProcessRef.recorded(session.shim_pid, session.shim_start_ticks))
        if session.is_ended:
            assert not shim_running, f"{session.id} is {session.status} but its shim runs"


def test_chaos_twenty_sigkills_lose_nothing(make_daemon):
    """Twenty SIGKILLs at random moments while sessions start, run and end: afterwards no gap, no duplicate, a sound database, true statuses and no orphan."""
    rng = random.Random(20261121)
    daemon = make_daemon(start=False, stop_timeout=1.0, **KEEP_EVERY_ROW)
    expected: dict[str, int] = {}
    for cycle in range(20):
        daemon.start(wait=cycle % 5 != 4)
        if cycle % 5 == 4:
            # Now and then the kill lands while the daemon is still starting up.
            time.sleep(rng.uniform(0.0, 0.4))
        else:
            assert_processes_match_statuses(daemon)
            for _ in range(rng.randint(0, 3)):
                code = rng.choice([0, 0, 1, 3])
                session = daemon.start_session(numbers(rng.uniform(0.1, 1.5), code))
                expected[session["id"]] = code
            time.sleep(rng.uniform(0.05, 0.8))
        daemon.kill9()

    daemon.start()
    assert_processes_match_statuses(daemon)
    for session_id, code in expected.items():
        ended = daemon.wait_ended(session_id, timeout=60)
        assert ended["exit_code"] == code, ended
        assert ended["status"] == ("completed" if code == 0 else "failed")
        assert_numbers_exactly_once(daemon.database, session_id)
    reader = daemon.reader()
    try:
        recorded = reader.list_sessions()
        assert reader.db.execute("PRAGMA integrity_check").get == "ok"
    finally:
        reader.close()
    assert {s.id for s in recorded} == set(expected)
    for session in recorded:
        assert not alive(session.shim_pid) and not alive(session.pid), session


def test_the_queue_and_drain_survive_a_restart(daemon):
    """Queued sessions and the drain setting survive a SIGKILL; after undrain the queue starts as slots allow."""
    daemon.request("drain")
    queued = [daemon.start_session(py(f"print({i})"), priority=i) for i in range(4)]
    daemon.kill9()
    daemon.start()
    assert daemon.request("info")["draining"] is True
    assert [s["status"] for s in daemon.request("ps", status="queued")] == ["queued"] * 4
    daemon.request("undrain")
    for session in queued:
        assert daemon.wait_ended(session["id"])["status"] == "completed"
    started = sorted(queued, key=lambda s: daemon.session(s["id"])["started_at"])
    assert [s["priority"] for s in started] == [3, 2, 1, 0]


def test_a_damaged_spool_loses_only_its_session_and_the_daemon_carries_on(daemon):
    """Garbage in one session's spool makes that session lost (what came before kept, its processes ended); the daemon and the other sessions go on."""
    damaged = daemon.start_session(py("import time\nwhile True:\n    print('tick', flush=True); time.sleep(0.05)"))
    gate = daemon.root / "gate"
    healthy = daemon.start_session(numbers_until(gate))
    wait_for(lambda: b"tick" in daemon.stdout_bytes(damaged["id"]), what="first ticks")
    running = daemon.session(damaged["id"])
    daemon.kill9()
    spool_dir = daemon.root / "run" / "sessions" / damaged["id"]
    segment = sorted(spool_dir.glob("spool.*"))[-1]
    with open(segment, "ab") as spool_file:
        spool_file.write(b"\x07garbage that is no record header at all")
    daemon.start()
    lost = daemon.wait_ended(damaged["id"])
    assert lost["status"] == "lost" and "damaged" in lost["reason"]
    assert daemon.stdout_bytes(damaged["id"]).startswith(b"tick\n")
    wait_for(lambda: not alive(running["pid"]) and not alive(running["shim_pid"]), what="its processes ended")
    wait_flowing(daemon, healthy["id"])
    gate.touch()
    assert daemon.wait_ended(healthy["id"], timeout=30)["status"] == "completed"
    assert_numbers_exactly_once(daemon.database, healthy["id"])


def test_a_session_recorded_before_start_ticks_existed_is_still_recognised(daemon):
    """A live session whose row has create times but no start ticks (written by an older slotd) is re-attached, not lost."""
    gate = daemon.root / "gate"
    session = daemon.start_session(numbers_until(gate))
    wait_for(lambda: daemon.session(session["id"])["pid"], what="command started")
    daemon.kill9()
    edit_session(daemon, session["id"], pid_start_ticks=None, shim_start_ticks=None)
    daemon.start()
    assert daemon.session(session["id"])["status"] == "running"
    gate.touch()
    assert daemon.wait_ended(session["id"], timeout=30)["status"] == "completed"
    assert_numbers_exactly_once(daemon.database, session["id"])


# -- a lost, replaced or damaged database ------------------------------------------------

TICKING = py("import time\nwhile True:\n    print('tick', flush=True); time.sleep(0.05)")


def running_session(daemon) -> dict:
    """A session printing a tick every 50 ms, once its command runs."""
    session = daemon.start_session(TICKING)
    return wait_for(lambda: (s := daemon.session(session["id"]))["pid"] and s, what="command started")


def end_session_processes(session: dict) -> None:
    """Kill what a session runs, by the PIDs and start ticks it was given (its row may be gone)."""
    signal_group(ProcessRef.recorded(session["pid"], session["pid_start_ticks"]), signal.SIGKILL)
    kill_process(ProcessRef.recorded(session["shim_pid"], session["shim_start_ticks"]))


def spool_of(daemon, session: dict):
    return daemon.root / "run" / "sessions" / session["id"]


def refusals(refused: subprocess.CompletedProcess) -> list[str]:
    """slotd's own lines on its stderr (the rest are log lines, SQLite's warnings among them)."""
    assert "Traceback" not in refused.stderr
    return [line for line in refused.stderr.splitlines() if line.startswith("slotd: ")]


def remove_database(daemon) -> None:
    for suffix in ("", "-wal", "-shm"):
        daemon.database.with_name(daemon.database.name + suffix).unlink(missing_ok=True)


def lost_journals(daemon) -> list[Path]:
    return sorted(daemon.database.parent.glob("slotd.db-wal.lost-*"))


@pytest.mark.parametrize("fault", ["deleted", "emptied", "replaced"])
def test_a_database_deleted_or_replaced_under_the_daemon_stops_it_and_sessions_run_on(daemon, fault):
    """A database deleted, emptied or replaced under the running daemon makes it stop with status 65 naming it (no checkpoint writes into the emptied file first), leaving its session and spool in place."""
    session = running_session(daemon)
    try:
        if fault == "deleted":
            daemon.database.unlink()
        elif fault == "emptied":
            os.truncate(daemon.database, 0)
        else:
            older = daemon.database.with_name("older.db")
            reader = daemon.reader()
            reader.db.execute("VACUUM INTO ?", (str(older),))
            reader.close()
            os.rename(older, daemon.database)
        assert daemon.process.wait(15) == 65
        log = daemon.log_path.read_text()
        assert f"slotd: database {daemon.database} was {fault}" in log and "while slotd ran" in log
        assert alive(session["shim_pid"]) and alive(session["pid"])
        assert spool_of(daemon, session).is_dir()
        # Its WAL, set aside: applied to whatever the path names now, it would corrupt it.
        [set_aside] = lost_journals(daemon)
        if fault in ("deleted", "emptied"):
            refused = start_refused(daemon)
            assert refused.returncode == 65
            [line] = refusals(refused)
            assert "holds 1 spool(s)" in line and session["id"] in line
        else:
            # The copy was taken with the session running: restored, it is re-attached.
            daemon.start()
            assert daemon.session(session["id"])["status"] == "running"
            assert "re-attached after restart" in system_text(daemon.database, session["id"])
            reader = daemon.reader()
            assert reader.db.execute("PRAGMA integrity_check").get == "ok"
            reader.close()
            # A second incident keeps the first one's WAL beside its own.
            kept = set_aside.read_bytes()
            daemon.database.unlink()
            assert daemon.process.wait(15) == 65
            assert len(lost_journals(daemon)) == 2 and set_aside.read_bytes() == kept
        assert alive(session["shim_pid"]) and spool_of(daemon, session).is_dir()
    finally:
        end_session_processes(session)


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_a_missing_or_empty_database_beside_live_spools_is_refused_and_nothing_removed(daemon, state):
    """A start that finds no database (or a 0-byte one) beside a live session's spool exits 65 in one line naming the spool, and removes nothing."""
    session = running_session(daemon)
    try:
        daemon.kill9()
        remove_database(daemon)
        if state == "empty":
            daemon.database.write_bytes(b"")
        refused = start_refused(daemon)
        assert refused.returncode == 65
        [line] = refusals(refused)
        assert f"is {state}" in line and session["id"] in line
        assert spool_of(daemon, session).is_dir() and alive(session["shim_pid"])
    finally:
        end_session_processes(session)
        remove_database(daemon)  # nothing for teardown to read


def test_a_missing_database_where_one_was_opened_is_refused_until_the_lock_file_goes(daemon):
    """With no spools but a lock file saying a database was opened, a missing database stops the start (65) until the lock file is deleted."""
    daemon.stop()
    remove_database(daemon)
    refused = start_refused(daemon)
    assert refused.returncode == 65
    [line] = refusals(refused)
    assert "slotd.lock" in line
    (daemon.root / "state" / "slotd.lock").unlink()
    daemon.start()
    assert daemon.request("ps") == []


def test_a_spool_whose_shim_still_runs_is_never_swept_as_stray(daemon):
    """A spool whose row no longer says live is kept, not removed, while its shim runs."""
    session = running_session(daemon)
    try:
        daemon.kill9()
        edit_session(daemon, session["id"], status="completed", slot=None)
        daemon.start()
        assert spool_of(daemon, session).is_dir() and alive(session["shim_pid"])
        assert "stray_spool_kept" in daemon.log_path.read_text()
    finally:
        end_session_processes(session)


@pytest.mark.parametrize("damage", ["not_a_database", "corrupt_pages"])
def test_a_damaged_database_stops_the_start_in_one_line_with_status_65(daemon, damage):
    """A damaged database stops the start with one line (no traceback) pointing at the recovery, and status 65."""
    for n in range(20):
        daemon.start_session(["true"], labels={"n": n})
    daemon.stop()
    if damage == "not_a_database":
        daemon.database.write_bytes(b"not a database\n" * 1000)
    else:
        # Every page after the first (the schema's root stays readable): garbage.
        with open(daemon.database, "r+b") as database:
            size = database.seek(0, os.SEEK_END)
            database.seek(4096)
            database.write(random.Random(6).randbytes(size - 4096))
    try:
        refused = start_refused(daemon)
        assert refused.returncode == 65
        # SQLite's own log lines (source line numbers) are not in front of it.
        assert refused.stderr.splitlines() == refusals(refused)
        [line] = refusals(refused)
        assert "is damaged" in line and ".recover" in line
    finally:
        remove_database(daemon)  # nothing for teardown to read


def test_sqlite_notices_from_the_start_are_logged_once_it_is_ready(daemon):
    """What SQLite logs while slotd starts (replaying the WAL of a killed daemon) is logged after all, once slotd is ready."""
    daemon.start_session(["sh", "-c", "seq 1000"])
    daemon.kill9()
    daemon.start()
    events = [json.loads(line) for line in daemon.log_path.read_text().splitlines() if line.startswith("{")]
    names = [event["event"] for event in events]
    started = len(names) - 1 - names[::-1].index("ready")
    assert any(event["event"] == "sqlite_log" and "recovered" in event["message"] for event in events[started:])
