"""Retention: a capped transcript keeps its head and tail; old and surplus sessions go."""

from __future__ import annotations

import functools

from supervisor import retention
from supervisor.config import Retention
from supervisor.database import DatabaseWriter
from supervisor.model import iso_from_unix
from supervisor.retention import truncation_marker
from supervisor.store import Batch, Reader, Row, Session, Store, trimming
from tests.harness import wait_for
from tests.helpers import py

MiB = 1 << 20


def test_a_capped_transcript_keeps_head_and_tail_with_a_marker_between(make_daemon):
    """A session writing 4 MiB under a 1 MiB cap keeps its first and last bytes exactly, with one truncation marker where the rest was."""
    daemon = make_daemon(retention={"max_session_bytes": MiB})
    lines = 40_000  # 100-byte numbered lines: 4 MB
    code = f"import sys, time\nfor i in range({lines}):\n    sys.stdout.write(f'{{i:08d}}' + 'x' * 91 + '\\n')\n    i % 4000 or (sys.stdout.flush(), time.sleep(0.3))"
    session = daemon.start_session(py(code))
    daemon.wait_ended(session["id"], timeout=60)
    wait_for(lambda: daemon.session(session["id"])["transcript_bytes"] <= MiB + 4096, what="truncation")

    reader = daemon.reader()
    try:
        rows = list(reader.iter_transcript(session["id"]))
    finally:
        reader.close()
    seqs = [row.seq for row in rows]
    assert seqs == sorted(set(seqs))
    markers = [row for row in rows if row.stream == "system" and row.data.startswith(b"transcript truncated")]
    assert len(markers) == 1
    marker_at = rows.index(markers[0])
    head = b"".join(r.data for r in rows[:marker_at] if r.stream == "stdout")
    tail = b"".join(r.data for r in rows[marker_at + 1 :] if r.stream == "stdout")
    expected = b"".join(f"{i:08d}".encode() + b"x" * 91 + b"\n" for i in range(lines))
    assert 0 < len(head) <= MiB // 2 and expected.startswith(head)
    assert 0 < len(tail) <= MiB // 2 and expected.endswith(tail)
    assert daemon.session(session["id"])["truncated_bytes"] >= len(expected) - MiB


def _session(number: int, status: str, ended_at: str | None) -> Session:
    return Session(
        id=f"{number:08d}-0000-4000-8000-000000000000",
        arrival=0,
        argv=["true"],
        cwd="/",
        status=status,
        queued_at=iso_from_unix(0),
        ended_at=ended_at,
    )


async def test_old_ended_sessions_are_pruned_and_live_ones_never(tmp_path):
    """Ended sessions past max_age_days are deleted with their rows; queued ones stay whatever their age."""
    store = Store(tmp_path / "slotd.db")
    writer = DatabaseWriter(store)
    old = store.create_session(_session(1, "completed", iso_from_unix(1000)))
    recent = store.create_session(_session(2, "failed", iso_from_unix(4_000_000_000)))
    waiting = store.create_session(_session(3, "queued", None))
    batch = Batch()
    batch.add_row(Row(old.id, 1, 0.0, "stdout", b"bye\n"))
    store.commit_batch(batch)

    deleted = await retention.enforce_age_and_budget(writer, Retention(max_age_days=30, max_db_bytes=0))
    assert deleted == [old.id]
    assert store.get_session(recent.id) is not None and store.get_session(waiting.id) is not None
    assert store.transcript_stats(old.id)["rows"] == 0
    store.close()


async def test_the_oldest_ended_sessions_go_while_the_database_is_over_budget(tmp_path):
    """Over max_db_bytes, the oldest ended sessions are deleted first until the database fits."""
    store = Store(tmp_path / "slotd.db")
    writer = DatabaseWriter(store)
    ids = []
    for number in range(6):
        session = store.create_session(_session(number, "completed", iso_from_unix(1000 + number)))
        batch = Batch()
        batch.add_row(Row(session.id, 1, 0.0, "stdout", b"x" * MiB))
        store.commit_batch(batch)
        ids.append(session.id)
    budget = 3 * MiB
    deleted = await retention.enforce_age_and_budget(writer, Retention(max_age_days=0, max_db_bytes=budget))
    assert deleted == ids[: len(deleted)]
    assert trimming.used_bytes(store) <= budget
    assert len(deleted) <= 4  # six 1 MiB sessions over a 3 MiB budget: no more than needed
    assert [s.id for s in store.sessions_with_status(["completed"])] == ids[len(deleted) :]
    store.close()


def test_retention_defaults_are_on():
    """Retention is on by default: a per-session cap and a max age."""
    defaults = Retention()
    assert defaults.max_session_bytes > 0 and defaults.max_age_days > 0


def test_truncation_in_slices_keeps_head_tail_and_an_exact_byte_count(tmp_path):
    """Slices of a truncation plan drop only middle rows, leave one marker, and keep transcript_bytes equal to what is stored."""
    store = Store(tmp_path / "slotd.db")
    session = store.create_session(_session(1, "completed", iso_from_unix(1000)))
    batch = Batch()
    for seq in range(1, 5001):
        batch.add_row(Row(session.id, seq, 0.0, "stdout", b"%09d\n" % seq))  # 10 bytes each
    store.commit_batch(batch)
    cap = 10_000
    reader = Reader(tmp_path / "slotd.db")
    try:
        for _ in range(2):  # a second round moves the marker's count, not the head
            plan = trimming.truncation_plan(reader, session.id, cap, cap * 9 // 10)
            assert plan is not None
            while trimming.drop_middle_rows(
                store, session.id, *plan, functools.partial(truncation_marker, cap=cap), max_rows=100
            ):
                pass
            more = Batch()
            last = reader.last_seq(session.id)
            for seq in range(last + 1, last + 2001):
                more.add_row(Row(session.id, seq, 0.0, "stdout", b"%09d\n" % seq))
            store.commit_batch(more)
        rows = list(reader.iter_transcript(session.id))
    finally:
        reader.close()
    seqs = [row.seq for row in rows]
    assert seqs == sorted(set(seqs))
    markers = [row for row in rows if row.stream == "system"]
    assert len(markers) == 1
    head = [row for row in rows if row.seq < markers[0].seq]
    assert [int(row.data) for row in head] == list(range(1, len(head) + 1))
    assert sum(len(row.data) for row in head) <= cap // 2
    tail = [row for row in rows if row.seq > markers[0].seq]
    assert [int(row.data) for row in tail] == list(range(tail[0].seq, seqs[-1] + 1))
    recorded = store.get_session(session.id)
    assert recorded.transcript_bytes == sum(len(row.data) for row in rows)
    assert recorded.truncation_seq == markers[0].seq
    store.close()
