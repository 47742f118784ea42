"""slotctl, as a user runs it: real subprocesses against a real daemon."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import py


def test_run_prints_output_and_exits_with_the_sessions_code(daemon):
    """slotctl run -- sh -c 'echo hi; exit 3' prints hi and exits 3."""
    result = daemon.cli("run", "--", "sh", "-c", "echo hi; exit 3")
    assert result.stdout == b"hi\n"
    assert result.returncode == 3


def test_missing_command_fails_with_a_reason_and_the_daemon_carries_on(daemon):
    """A missing command gives a failed session with reason 'command not found'; the next session runs."""
    result = daemon.cli("run", "--", "no-such-command-anywhere")
    assert result.returncode == 127
    assert b"command not found" in result.stderr
    failed = daemon.request("ps", status="failed")[0]
    assert failed["reason"] == "command not found"
    assert daemon.cli("run", "--", "true").returncode == 0


def test_slotctl_without_a_daemon_says_so_in_one_line(tmp_path):
    """With no daemon listening, slotctl prints one line (no traceback) and exits 3."""
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "--socket", str(tmp_path / "none.sock"), "ps"],
        capture_output=True,
    )
    assert result.returncode == 3
    assert result.stderr.decode().count("\n") == 1
    assert b"not running" in result.stderr
    assert b"Traceback" not in result.stderr


def test_ps_json_carries_the_session_fields(daemon):
    """ps --json gives every session with its documented fields."""
    session = daemon.start_session(py("print(1)"), labels={"project": "slotd"})
    daemon.wait_ended(session["id"])
    result = daemon.cli("ps", "--json")
    assert result.returncode == 0, result.stderr
    sessions = json.loads(result.stdout)
    fields = {"id", "slot", "status", "priority", "argv", "cwd", "labels", "pid", "exit_code", "signal",
              "reason", "queued_at", "started_at", "ended_at"}
    assert fields <= set(sessions[0])
    assert sessions[0]["labels"] == {"project": "slotd"}
    filtered = json.loads(daemon.cli("ps", "--json", "--label", "project=other").stdout)
    assert filtered == []


def test_logs_tail_since_and_stream_filters(daemon):
    """logs -n N gives the last N lines, --since SEQ the rows after it, --stream one stream."""
    code = "import sys\nfor i in range(100): print(i)\nprint('oops', file=sys.stderr)"
    session = daemon.start_session(py(code))
    daemon.wait_ended(session["id"])
    sid = session["id"][:8]
    assert daemon.cli("logs", "--raw", "--stream", "stdout", "-n", "3", sid).stdout == b"97\n98\n99\n"
    assert daemon.cli("logs", "--raw", "--stream", "stderr", sid).stdout == b"oops\n"
    rows = [json.loads(line) for line in daemon.cli("logs", "--json", sid).stdout.splitlines()]
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    later = [json.loads(line) for line in daemon.cli("logs", "--json", "--since", "2", sid).stdout.splitlines()]
    assert [r["seq"] for r in later] == [r["seq"] for r in rows if r["seq"] > 2]
    human = daemon.cli("logs", sid).stdout
    assert b"[slotd] started in slot" in human and b"[slotd] exit code 0" in human


def test_logs_follow_prints_until_the_session_ends(daemon):
    """logs -f prints every line of a running session and returns when it ends."""
    code = "import time\nfor i in range(20):\n    print(i, flush=True); time.sleep(0.02)"
    session = daemon.start_session(py(code))
    result = daemon.cli("logs", "-f", "--raw", session["id"])
    assert result.returncode == 0
    assert result.stdout == b"".join(f"{i}\n".encode() for i in range(20))


def test_start_then_stop_from_the_command_line(daemon):
    """start prints the new session's id; stop ends it and says killed."""
    started = daemon.cli("start", "-q", "--", sys.executable, "-c", "import time; time.sleep(600)")
    assert started.returncode == 0, started.stderr
    session_id = started.stdout.decode().strip()
    daemon.wait_status(session_id, "running")
    stopped = daemon.cli("stop", session_id[:8])
    assert stopped.returncode == 0
    assert b"killed" in stopped.stdout


def test_refused_requests_exit_1_with_the_error_code(daemon):
    """A request the daemon refuses exits 1 and names the error code."""
    result = daemon.cli("show", "ffffffff-no-such")
    assert result.returncode == 1
    assert b"not_found" in result.stderr


def test_logs_since_then_follow_prints_each_row_once(daemon):
    """logs --since SEQ -f on an ended session prints only the rows after SEQ, once."""
    session = daemon.start_session(py("for i in range(5): print(i)"))
    daemon.wait_ended(session["id"])
    rows = [json.loads(line) for line in daemon.cli("logs", "--json", session["id"]).stdout.splitlines()]
    last = rows[-1]["seq"]
    again = daemon.cli("logs", "--json", "--since", str(last), "-f", session["id"])
    assert again.returncode == 0
    assert again.stdout == b""


def test_ps_label_filter_matches_type_and_value(daemon):
    """A label filter matches only the same JSON type and value: true is not 1."""
    flagged = daemon.start_session(py("pass"), labels={"flag": True})
    daemon.start_session(py("pass"), labels={"flag": 1})
    matches = daemon.request("ps", labels={"flag": True})
    assert [s["id"] for s in matches] == [flagged["id"]]
