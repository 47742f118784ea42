"""Slots and the queue, against a real daemon with real sessions."""

from __future__ import annotations

import apsw
import pytest

from supervisor.client import RemoteError
from tests.harness import wait_for
from tests.helpers import py

# A session that runs until its gate file appears.
GATE = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.02)\nprint('released', sys.argv[1])"


def gated(daemon, name: str, **args):
    gate = daemon.root / f"gate-{name}"
    session = daemon.start_session([*py(GATE), str(gate)], **args)
    return session, gate


def test_five_sessions_fill_three_slots_and_queue_two(daemon):
    """Five sessions give three running in slots 1-3 and two queued."""
    sessions = [gated(daemon, str(i))[0] for i in range(5)]
    running = [daemon.wait_status(s["id"], "running") for s in sessions[:3]]
    assert sorted(s["slot"] for s in running) == [1, 2, 3]
    for session in sessions[3:]:
        assert daemon.session(session["id"])["status"] == "queued"
        assert daemon.session(session["id"])["slot"] is None
    ps = daemon.request("ps")
    assert [s["status"] for s in ps][:5] == ["running"] * 3 + ["queued"] * 2


def test_freed_slot_goes_to_the_highest_priority_then_first_arrived(daemon):
    """When a session ends, the queued one with the highest priority, then the earliest, starts in its slot."""
    first, gate0 = gated(daemon, "0")
    gated(daemon, "1")
    gated(daemon, "2")
    for s in daemon.request("ps", status="running"):
        daemon.wait_status(s["id"], "running")
    low, _ = gated(daemon, "low", priority=0)
    high_early, _ = gated(daemon, "high-early", priority=5)
    high_late, _ = gated(daemon, "high-late", priority=5)
    slot = daemon.wait_status(first["id"], "running")["slot"]

    gate0.touch()
    assert daemon.wait_ended(first["id"])["status"] == "completed"
    started = daemon.wait_status(high_early["id"], "running")
    assert started["slot"] == slot
    assert daemon.session(high_late["id"])["status"] == "queued"
    assert daemon.session(low["id"])["status"] == "queued"


def test_session_environment_names_its_id_and_slot(daemon):
    """A session's command sees SLOTD_SESSION_ID and SLOTD_SLOT, and the env additions it was given."""
    code = "import os; print(os.environ['SLOTD_SESSION_ID'], os.environ['SLOTD_SLOT'], os.environ['EXTRA'])"
    session = daemon.start_session(py(code), env={"EXTRA": "yes"})
    ended = daemon.wait_ended(session["id"])
    assert ended["status"] == "completed"
    assert daemon.stdout_bytes(session["id"]) == f"{session['id']} {ended['slot'] or 1} yes\n".encode()


def test_no_queue_start_is_refused_when_slots_are_full(daemon):
    """start with queue=false answers slots_full when every slot is busy, and stores nothing."""
    for i in range(3):
        gated(daemon, str(i))
    wait_for(lambda: len(daemon.request("ps", status="running")) == 3, what="three running")
    before = len(daemon.request("ps"))
    with pytest.raises(RemoteError) as caught:
        daemon.start_session(py("pass"), queue=False)
    assert caught.value.code == "slots_full"
    assert len(daemon.request("ps")) == before


def test_database_refuses_two_live_sessions_in_one_slot(daemon):
    """A direct INSERT of a second live session into a busy slot fails on the database constraint."""
    session, _ = gated(daemon, "0")
    slot = daemon.wait_status(session["id"], "running")["slot"]
    connection = apsw.Connection(str(daemon.database))
    connection.set_busy_timeout(5000)
    with pytest.raises(apsw.ConstraintError):
        connection.execute(
            "INSERT INTO sessions (id, arrival, status, slot, argv, cwd, queued_at) "
            "VALUES ('intruder', 999999, 'running', ?, '[\"true\"]', '/', '2026-01-01T00:00:00+00:00')",
            (slot,),
        )
    connection.close()


def test_cancel_removes_a_queued_session_from_the_queue(daemon):
    """A cancelled queued session never starts, and cancel refuses a running one."""
    for i in range(3):
        gated(daemon, str(i))
    queued, _ = gated(daemon, "q")
    assert daemon.request("cancel", session=queued["id"])["status"] == "cancelled"
    running = daemon.request("ps", status="running")[0]
    with pytest.raises(RemoteError) as caught:
        daemon.request("cancel", session=running["id"])
    assert caught.value.code == "invalid_state"


def test_drain_holds_the_queue_until_undrain(daemon):
    """While draining, queued sessions wait even with free slots; undrain starts them."""
    daemon.request("drain")
    session = daemon.start_session(py("print('ran')"))
    wait_for(lambda: daemon.request("info")["draining"], what="draining")
    assert daemon.session(session["id"])["status"] == "queued"
    daemon.request("undrain")
    assert daemon.wait_ended(session["id"])["status"] == "completed"


def test_delete_removes_an_ended_session_and_its_transcript(daemon):
    """delete removes an ended session and its rows, and refuses a live one."""
    session = daemon.start_session(py("print('x')"))
    daemon.wait_ended(session["id"])
    live, _ = gated(daemon, "live")
    with pytest.raises(RemoteError) as caught:
        daemon.request("delete", session=live["id"])
    assert caught.value.code == "invalid_state"
    daemon.request("delete", session=session["id"])
    with pytest.raises(RemoteError) as caught:
        daemon.request("show", session=session["id"])
    assert caught.value.code == "not_found"
    reader = daemon.reader()
    try:
        assert reader.transcript_stats(session["id"])["rows"] == 0
    finally:
        reader.close()


def test_sessions_can_be_named_by_a_unique_prefix(daemon):
    """Any unique prefix of a session id names it; an ambiguous one is refused."""
    session = daemon.start_session(py("pass"))
    daemon.wait_ended(session["id"])
    assert daemon.request("show", session=session["id"][:8])["id"] == session["id"]
    others = [daemon.start_session(py("pass")) for _ in range(20)]
    first_chars = [s["id"][0] for s in [*others, session]]
    # 21 ids over 16 hex digits: two share a first character (pigeonhole).
    shared = next(c for c in set(first_chars) if first_chars.count(c) > 1)
    with pytest.raises(RemoteError) as caught:
        daemon.request("show", session=shared)
    assert caught.value.code == "ambiguous_id"
    with pytest.raises(RemoteError) as caught:
        daemon.request("show", session="zzzz")
    assert caught.value.code == "not_found"


def test_start_with_a_free_slot_replies_running(daemon):
    """A session started while a slot is free is running in the reply itself."""
    session, gate = gated(daemon, "now")
    assert session["status"] == "running"
    assert session["slot"] == 1
    gate.touch()


def test_prune_removes_ended_sessions_only(daemon):
    """prune deletes ended sessions and keeps live ones; an age beyond the epoch deletes nothing."""
    done = daemon.start_session(py("pass"))
    daemon.wait_ended(done["id"])
    live, gate = gated(daemon, "live")
    assert daemon.request("prune", older_than=1e12) == {"deleted": []}
    assert daemon.request("prune")["deleted"] == [done["id"]]
    assert [s["id"] for s in daemon.request("ps")] == [live["id"]]
    gate.touch()
