"""Changing the queue and the pool while the daemon runs: edit, label, slots N, and the
controls on many sessions at once. Through the real slotctl against real daemons."""

from __future__ import annotations

import re

import pytest

from supervisor.client import RemoteError
from supervisor.errors import CliExit
from supervisor.protocol import ErrorCode
from tests.harness import DaemonHandle, wait_for

SLEEP = ["sleep", "600"]


def queued_behind_one(daemon: DaemonHandle, *argvs: list[str]) -> tuple[str, list[str]]:
    """A running session holding the only slot, and sessions queued behind it."""
    blocker = daemon.start_session(SLEEP)["id"]
    return blocker, [daemon.start_session(argv)["id"] for argv in argvs]


def text(result) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def test_edit_changes_a_queued_sessions_command_priority_environment_and_labels(make_daemon) -> None:
    """`slotctl edit` gives a queued session a new command, priority, environment and labels, and the new priority puts it first."""
    daemon = make_daemon(slots=1)
    blocker, (first, second) = queued_behind_one(daemon, ["echo", "first"], ["echo", "second"])
    daemon.request("label", session=second, set={"keep": "yes"})
    daemon.request("edit", session=second, env={"OLD": "1", "GONE": "x"})
    edited = text(
        daemon.cli(
            "edit", "-p", "5", "-e", "NEW=2", "-u", "GONE", "-l", "team=a", second, "--", "sh", "-c", "echo $OLD$NEW"
        )
    )
    assert edited.startswith(f"{second[:8]} edited: argv, env, labels, priority")
    session = daemon.session(second)
    assert session["argv"] == ["sh", "-c", "echo $OLD$NEW"] and session["priority"] == 5
    assert session["env"] == {"OLD": "1", "NEW": "2"}
    assert session["labels"] == {"keep": "yes", "team": "a"}
    daemon.request("stop", session=blocker)
    daemon.wait_ended(second)
    assert daemon.stdout_bytes(second) == b"12\n"
    # The edited one went first.
    assert daemon.wait_ended(first)["started_at"] > daemon.session(second)["started_at"]


def test_edit_refuses_a_session_that_is_not_queued_and_an_empty_change(daemon: DaemonHandle) -> None:
    """edit of a running session is invalid_state pointing at label; an edit that changes nothing is refused."""
    session_id = daemon.start_session(SLEEP)["id"]
    with pytest.raises(RemoteError) as refused:
        daemon.request("edit", session=session_id, priority=3)
    assert refused.value.code == ErrorCode.INVALID_STATE and "`label`" in refused.value.message
    with pytest.raises(RemoteError) as refused:
        daemon.request("edit", session=session_id)
    assert refused.value.code == ErrorCode.INVALID_ARGUMENT
    assert daemon.cli("edit", session_id).returncode == CliExit.USAGE


def test_label_sets_and_removes_labels_of_live_and_ended_sessions(daemon: DaemonHandle) -> None:
    """`slotctl label` sets KEY=VALUE and -d removes, on a running session and on an ended one; a label too big is refused whole."""
    running = daemon.start_session(SLEEP, labels={"stage": "build", "wip": "1"})["id"]
    assert text(daemon.cli("label", running, "stage=test", "owner=me", "-d", "wip")) == (
        f"{running[:8]} labels: stage=test owner=me\n"
    )
    ended = daemon.start_session(["true"])["id"]
    daemon.wait_ended(ended)
    daemon.cli("label", ended, "verdict=ok")
    assert daemon.session(ended)["labels"] == {"verdict": "ok"}
    with pytest.raises(RemoteError) as refused:
        daemon.request("label", session=running, set={"big": "x" * 40_000, "bigger": "y" * 40_000})
    assert refused.value.code == ErrorCode.INVALID_ARGUMENT
    assert daemon.session(running)["labels"] == {"stage": "test", "owner": "me"}


def test_slots_n_starts_more_at_once_stops_nothing_when_lowered_and_outlives_a_restart(make_daemon) -> None:
    """`slotctl slots 3` starts two queued sessions at once; `slots 1` leaves three running and starts no fourth; after a restart there is still 1 slot."""
    daemon = make_daemon(slots=1)
    _blocker, queued = queued_behind_one(daemon, SLEEP, SLEEP, SLEEP)
    # The reply may come before or after the dispatcher has started the queued ones.
    assert re.match(r"slots: 3 \(\d of 3 slots busy, \d queued; the config says 1,", text(daemon.cli("slots", "3")))
    wait_for(lambda: [daemon.session(s)["status"] for s in queued[:2]] == ["running", "running"], what="two to start")
    assert daemon.session(queued[2])["status"] == "queued"
    assert text(daemon.cli("slots", "1")) == "slots: 1 (3 of 1 slots busy, 1 queued)\n"
    info = daemon.request("info")
    assert (info["slots"], info["configured_slots"], info["busy"], info["queued"]) == (1, 1, 3, 1)
    daemon.kill9()
    daemon.start()
    assert daemon.request("info")["slots"] == 1
    assert daemon.session(queued[2])["status"] == "queued"


def test_controls_take_several_ids_or_a_label_and_report_each(daemon: DaemonHandle) -> None:
    """stop with two ids stops both, a line each; pause -l selects by label; one refusal among them exits 1 and the rest still happen."""
    ids = [daemon.start_session(SLEEP, labels={"team": team})["id"] for team in ("a", "a", "b")]
    paused = text(daemon.cli("pause", "-l", "team=a"))
    assert sorted(paused.splitlines()) == sorted(f"{session_id} paused" for session_id in ids[:2])
    assert daemon.session(ids[2])["status"] == "running"
    stopped = daemon.cli("stop", ids[0], ids[1], "nonesuch")
    assert stopped.returncode == CliExit.REFUSED and b"stop nonesuch" in stopped.stderr
    assert sorted(line.split()[1] for line in stopped.stdout.decode().splitlines()) == ["killed", "killed"]
    killed = text(daemon.cli("kill", "-s", "TERM", ids[2]))
    assert killed.startswith(f"{ids[2]} sent SIGTERM (")


def test_all_asks_before_destroying_and_selects_what_the_command_applies_to(make_daemon) -> None:
    """cancel --all without a terminal needs -y; with it, every queued session is cancelled (a line each, no 'cancelled (cancelled)') and the running one is left."""
    daemon = make_daemon(slots=1)
    blocker, queued = queued_behind_one(daemon, SLEEP, SLEEP)
    refused = daemon.cli("cancel", "--all")
    assert refused.returncode == CliExit.USAGE and b"add -y" in refused.stderr
    cancelled = text(daemon.cli("cancel", "--all", "-y"))
    assert sorted(cancelled.splitlines()) == sorted(f"{session_id} cancelled" for session_id in queued)
    assert daemon.session(blocker)["status"] == "running"
    assert daemon.cli("delete", "--all", "-y").returncode == 0
    assert [s["id"] for s in daemon.request("ps", all=True)] == [blocker]
    assert daemon.cli("stop").returncode == CliExit.USAGE
