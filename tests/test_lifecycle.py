"""Stopping, signalling, pausing, checkpoints and input, against real process groups."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from supervisor.client import RemoteError
from tests.harness import wait_for
from tests.helpers import alive, py

# A session whose child ignores SIGTERM and writes its pid, then both wait forever.
STUBBORN_FAMILY = (
    "import os, signal, subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', "
    "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    'print("grandchild ready", flush=True); time.sleep(600)\'])\n'
    "print('child', child.pid, flush=True)\n"
    "time.sleep(600)\n"
)


def pids_of(daemon, session_id):
    out = daemon.stdout_bytes(session_id).decode()
    return [int(line.split()[1]) for line in out.splitlines() if line.startswith("child ")]


def test_stop_leaves_no_process_behind_even_one_ignoring_sigterm(make_daemon):
    """Stop ends every process of the session's group, a grandchild ignoring SIGTERM included."""
    daemon = make_daemon(stop_timeout=1.0)
    session = daemon.start_session(py(STUBBORN_FAMILY))
    wait_for(lambda: b"grandchild ready" in daemon.stdout_bytes(session["id"]), what="grandchild ready")
    running = daemon.session(session["id"])
    grandchild = pids_of(daemon, session["id"])[0]
    family = [running["pid"], grandchild]
    assert all(psutil.pid_exists(pid) for pid in family)

    stopped = daemon.request("stop", session=session["id"])
    assert stopped["status"] == "killed"
    assert stopped["slot"] is None
    wait_for(lambda: not any(alive(pid) for pid in [*family, running["shim_pid"]]), what="every process gone")


JOB_IN_ITS_OWN_GROUP = """
import os, subprocess, sys, time
# What a shell with job control does with a job: a process group of its own, in the
# session of the command.
job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], process_group=0)
print("job", job.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "tty"])
def test_stop_ends_a_job_in_a_process_group_of_its_own(make_daemon, tty):
    """Stop ends every process of the session's session, a job its command put in a process group of its own included."""
    daemon = make_daemon(stop_timeout=1.0)
    session = daemon.request("start", argv=py(JOB_IN_ITS_OWN_GROUP), cwd="/", tty=tty)

    def output() -> bytes:
        return daemon.stdout_bytes(session["id"], streams=("stdout", "tty"))

    wait_for(lambda: b"job " in output(), what="the job started")
    job = int(output().split(b"job ")[1].split()[0])
    try:
        assert psutil.Process(job).pid == job and os.getpgid(job) == job
        daemon.request("stop", session=session["id"])
        wait_for(lambda: not alive(job), what="the job gone")
    finally:
        if alive(job):
            os.kill(job, signal.SIGKILL)


def test_kill_sends_the_signal_asked_for(daemon):
    """kill delivers the signal asked for: SIGINT that the command dies of is its own failure; SIGTERM is a stop, recorded killed."""
    sessions = [daemon.start_session(py("import time; print('up', flush=True); time.sleep(600)")) for _ in range(2)]
    for session in sessions:
        wait_for(lambda s=session: b"up" in daemon.stdout_bytes(s["id"]), what="session up")
    daemon.request("kill", session=sessions[0]["id"], signal="INT")
    daemon.request("kill", session=sessions[1]["id"], signal="SIGTERM")
    interrupted, terminated = (daemon.wait_ended(s["id"]) for s in sessions)
    # Python dies of SIGINT by re-raising it after the KeyboardInterrupt traceback.
    assert (interrupted["status"], interrupted["signal"]) == ("failed", 2)
    assert (terminated["status"], terminated["signal"]) == ("killed", 15)


def test_pause_stops_the_process_and_resume_continues_it(daemon):
    """pause SIGSTOPs the session (it keeps its slot) and resume SIGCONTs it back to running."""
    session = daemon.start_session(py("import time\nwhile True:\n    print(time.time(), flush=True); time.sleep(0.02)"))
    running = daemon.wait_status(session["id"], "running")
    wait_for(lambda: daemon.session(session["id"])["pid"], what="pid")
    pid = daemon.session(session["id"])["pid"]
    paused = daemon.request("pause", session=session["id"])
    assert paused["status"] == "paused"
    assert paused["slot"] == running["slot"]
    wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, what="process stopped")
    resumed = daemon.request("resume", session=session["id"])
    assert resumed["status"] == "running"
    wait_for(lambda: psutil.Process(pid).status() != psutil.STATUS_STOPPED, what="process continued")
    assert daemon.request("resume", session=session["id"])["status"] == "running"
    daemon.request("stop", session=session["id"])
    with pytest.raises(RemoteError) as caught:
        daemon.request("pause", session=session["id"])
    assert caught.value.code == "invalid_state"


def test_checkpoint_prompt_waits_for_an_operator_and_send_resumes_it(make_daemon):
    """Output matching checkpoint_pattern makes a session waiting_checkpoint, listed first; send delivers input, records it, and returns it to running."""
    daemon = make_daemon(checkpoint_pattern=r"Continue\? \[y/N\]")
    busy = daemon.start_session(py("import time; time.sleep(600)"))
    code = (
        "import sys\n"
        "sys.stdout.write('Continue? [y/N] '); sys.stdout.flush()\n"
        "answer = sys.stdin.readline()\n"
        "print('got', answer.strip(), flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    session = daemon.start_session(py(code))
    daemon.wait_status(session["id"], "waiting_checkpoint")
    assert daemon.request("ps")[0]["id"] == session["id"]

    daemon.request("send", session=session["id"], data="y\n")
    assert daemon.session(session["id"])["status"] == "running"
    wait_for(lambda: b"got y" in daemon.stdout_bytes(session["id"]), what="the answer delivered")
    reader = daemon.reader()
    try:
        stdin_rows = list(reader.iter_transcript(session["id"], streams=["stdin"]))
    finally:
        reader.close()
    assert [row.data for row in stdin_rows] == [b"y\n"]
    assert daemon.session(session["id"])["status"] == "running"
    for s in (session, busy):
        daemon.request("stop", session=s["id"])


def test_checkpoint_pattern_that_backtracks_elsewhere_leaves_the_daemon_answering(make_daemon):
    """A checkpoint pattern that backtracks exponentially in other engines, against long output lines, costs the daemon no responsiveness and still matches."""
    daemon = make_daemon(checkpoint_pattern="(a+)+$")
    code = (
        "import sys, time\n"
        "for _ in range(20):\n"
        "    sys.stdout.write('a' * 50000 + '!\\n'); sys.stdout.flush()\n"
        "sys.stdout.write('aaaa'); sys.stdout.flush()\n"
        "time.sleep(600)\n"
    )
    session = daemon.start_session(py(code))

    def answers_promptly_and_waits() -> bool:
        # A stalled event loop makes this fail after 5 s instead of hanging the test.
        with daemon.client(timeout=5) as client:
            client.request("info")
            return client.request("show", session=session["id"])["status"] == "waiting_checkpoint"

    wait_for(answers_promptly_and_waits, what="the trailing 'aaaa' to match while every request is answered")
    wait_for(lambda: daemon.stdout_bytes(session["id"]).count(b"!\n") == 20, what="all 20 long lines stored")


def test_send_eof_closes_the_sessions_stdin(daemon):
    """send with eof closes the command's stdin, so a reader of stdin sees the end."""
    session = daemon.start_session(py("import sys; data = sys.stdin.read(); print(len(data))"))
    daemon.wait_status(session["id"], "running")
    daemon.request("send", session=session["id"], data="abc", eof=True)
    assert daemon.wait_ended(session["id"])["status"] == "completed"
    assert daemon.stdout_bytes(session["id"]) == b"3\n"


def test_leftover_processes_end_with_the_command(daemon):
    """When a session's command exits, what it left running in its group is ended too."""
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], stdout=subprocess.DEVNULL)\n"
        "print('child', child.pid, flush=True)\n"
    )
    session = daemon.start_session(py(code))
    daemon.wait_ended(session["id"])
    child = pids_of(daemon, session["id"])[0]
    wait_for(lambda: not alive(child), what="leftover child ended")


def test_stop_without_waiting_still_escalates_to_sigkill(make_daemon):
    """stop with wait=false returns at once, and SIGKILL still follows the timeout."""
    daemon = make_daemon(stop_timeout=0.5)
    stubborn = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(600)"
    )
    session = daemon.start_session(py(stubborn))
    wait_for(lambda: b"up" in daemon.stdout_bytes(session["id"]), what="session up")
    reply = daemon.request("stop", session=session["id"], wait=False)
    assert reply["status"] == "running"
    ended = daemon.wait_ended(session["id"])
    assert ended["status"] == "killed"
    assert ended["signal"] == 9


def test_kill_with_sigstop_and_sigcont_pauses_and_resumes(daemon):
    """kill -s STOP marks the session paused and kill -s CONT running again."""
    session = daemon.start_session(py("import time; time.sleep(600)"))
    daemon.wait_status(session["id"], "running")
    assert daemon.request("kill", session=session["id"], signal="STOP")["status"] == "paused"
    assert daemon.request("kill", session=session["id"], signal="SIGCONT")["status"] == "running"
    daemon.request("stop", session=session["id"])


def test_a_terminating_signal_to_a_paused_session_continues_it(daemon):
    """kill -s TERM on a paused session also sends SIGCONT, and the session shows running again."""
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('term', flush=True))\n"
        "print('up', flush=True)\n"
        "while True: time.sleep(0.05)\n"
    )
    session = daemon.start_session(py(code))
    wait_for(lambda: b"up" in daemon.stdout_bytes(session["id"]), what="session up")
    daemon.request("pause", session=session["id"])
    assert daemon.request("kill", session=session["id"], signal="TERM")["status"] == "running"
    wait_for(lambda: b"term" in daemon.stdout_bytes(session["id"]), what="the handler ran")
    daemon.request("kill", session=session["id"], signal="KILL")
    assert daemon.wait_ended(session["id"])["status"] == "killed"


def test_pausing_a_session_whose_command_has_exited_is_refused(make_daemon):
    """pause answers invalid_state, and leaves the status alone, once the command itself has exited (its leftovers are being ended)."""
    daemon = make_daemon(stop_timeout=5.0)
    # The leftover outlives the command until the gate opens (or SIGKILL after stop_timeout).
    gate = daemon.root / "gate"
    leftover = f"import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True)\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)"
    code = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {leftover!r}], stdout=subprocess.PIPE)\n"
        "child.stdout.readline()  # it ignores SIGTERM from here on; it still holds our stderr\n"
        "print('leaving', flush=True)\n"
    )
    session = daemon.start_session(py(code))
    pid = wait_for(lambda: daemon.session(session["id"])["pid"], what="pid")
    wait_for(lambda: not alive(pid), what="the command to exit")
    assert daemon.session(session["id"])["status"] == "running"  # the shim is ending what it left
    with pytest.raises(RemoteError) as caught:
        daemon.request("pause", session=session["id"])
    assert caught.value.code == "invalid_state"
    assert daemon.session(session["id"])["status"] == "running"
    gate.touch()
    assert daemon.wait_ended(session["id"], timeout=20)["status"] == "completed"
