"""slotctl restart (rerun): a new session like an old one, through the real slotctl
against a real daemon."""

from __future__ import annotations

import json
import re

from supervisor.errors import CliExit
from tests.harness import DaemonHandle
from tests.helpers import py

# What restart copies from the session it repeats (and start sets from its options).
COPIED = (
    "argv", "cwd", "env", "labels", "priority", "nice", "tty", "tty_cols", "tty_rows",
    "timeout", "memory_limit", "inherit_env",
)  # fmt: skip


def cli_json(daemon: DaemonHandle, *args: str) -> dict:
    result = daemon.cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_restart_starts_a_new_session_with_the_old_ones_settings(daemon):
    """restart -q of an ended session prints only a new id, whose session has the old one's argv, cwd, env, labels, priority, nice, terminal and limits and names the old one."""
    workdir = daemon.root / "work"
    workdir.mkdir()
    started = daemon.cli(
        "start", "-q", "--tty", "--size", "100x30", "-p", "3", "--nice", "5", "-e", "GREETING=hi",
        "-l", "job=nightly", "-C", str(workdir), "--timeout", "1h", "--memory", "1G", "--",
        *py("import os; print(os.environ['GREETING'], os.getcwd(), os.get_terminal_size())"),
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    old = daemon.wait_ended(started.stdout.decode().strip())

    restarted = daemon.cli("restart", "-q", old["id"][:8])
    assert restarted.returncode == 0, restarted.stderr
    new_id = restarted.stdout.decode().strip()
    assert new_id != old["id"] and len(new_id) == len(old["id"])
    new = daemon.wait_ended(new_id)
    assert {name: new[name] for name in COPIED} == {name: old[name] for name in COPIED}
    assert new["restart_of"] == old["id"] and old["restart_of"] is None
    assert new["exit_code"] == 0
    output = daemon.stdout_bytes(new_id, ("tty",))
    assert b"hi " + str(workdir).encode() in output and b"columns=100, lines=30" in output
    assert re.search(rf"^restart_of: +{old['id']}$", daemon.cli("show", new_id).stdout.decode(), re.MULTILINE)


def test_rerun_of_a_live_session_leaves_it_running(daemon):
    """rerun, restart's other name, of a running session starts a second one and does not stop the first."""
    old = daemon.start_session(py("import time; time.sleep(600)"))
    new = cli_json(daemon, "rerun", old["id"])
    assert new["restart_of"] == old["id"] and new["status"] == "running"
    assert daemon.session(old["id"])["status"] == "running"


def test_restart_of_an_unknown_session_is_refused(daemon):
    """restart of an id no session has exits 1 with not_found and starts nothing."""
    result = daemon.cli("restart", "nosuchid")
    assert result.returncode == CliExit.REFUSED
    assert "[not_found]" in result.stderr.decode()
    assert daemon.request("ps") == []
