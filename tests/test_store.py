"""The SQLite store: real database files in tmp_path, real APSW and sqlite3 connections."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from supervisor.model import ENDED_STATUSES, iso_from_unix, utc_now
from supervisor.store import (
    SCHEMA_VERSION,
    AmbiguousPrefix,
    Batch,
    Reader,
    Row,
    SchemaTooNew,
    Session,
    Store,
    migrate,
)

DAY = 86400.0


def new_session(session_id: str | None = None, status: str = "queued", **fields: Any) -> Session:
    """A session as the daemon would create it; create_session assigns the arrival."""
    return Session(
        id=session_id or str(uuid.uuid4()),
        arrival=0,
        argv=fields.pop("argv", ["echo", "hello"]),
        cwd=fields.pop("cwd", "/tmp"),
        status=status,
        queued_at=fields.pop("queued_at", utc_now()),
        **fields,
    )


def insert_raw(db: apsw.Connection, session_id: str, status: str, slot: int | None, arrival: int) -> None:
    """An INSERT that bypasses Store: what a buggy caller or an outside tool could do."""
    with db:
        db.execute(
            "INSERT INTO sessions (id, arrival, status, slot, argv, cwd, queued_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (session_id, arrival, status, slot, '["true"]', "/", utc_now()),
        )


def transcript_rows(session_id: str, count: int, start: int = 1) -> list[Row]:
    """Rows with seq start.., alternating stdout/stderr, with NUL and invalid UTF-8 in their data."""
    streams = ["stdout", "stderr", "stdout", "system"]
    return [
        Row(session_id, seq, 1000.0 + seq, streams[seq % 4], b"row %d \x00\xff\xfe\n" % seq)
        for seq in range(start, start + count)
    ]


def commit_rows(store: Store, rows: list[Row]) -> None:
    batch = Batch()
    for row in rows:
        batch.add_row(row)
    store.commit_batch(batch)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "slotd.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    store = Store(db_path)
    yield store
    store.close()


@pytest.fixture
def reader(store: Store, db_path: Path) -> Iterator[Reader]:
    reader = Reader(db_path)
    yield reader
    reader.close()


# -- schema and connection settings ------------------------------------------------------


def test_migrations_set_user_version_and_reopening_is_idempotent(tmp_path: Path) -> None:
    """A new database reaches SCHEMA_VERSION, and reopening it or migrating again changes nothing."""
    path = tmp_path / "slotd.db"
    store = Store(path)
    try:
        assert store.db.pragma("user_version") == SCHEMA_VERSION
        session = store.create_session(new_session())
    finally:
        store.close()

    again = Store(path)
    try:
        assert again.db.pragma("user_version") == SCHEMA_VERSION
        assert migrate(again.db) == SCHEMA_VERSION
        assert again.get_session(session.id) == session
        assert again.create_session(new_session()).arrival == session.arrival + 1
    finally:
        again.close()


def database_of_schema(path: Path, version: int) -> apsw.Connection:
    """A database as slotd left it at schema `version`, holding one ended session, 's'."""
    db = apsw.Connection(str(path))
    migrate(db, to=version)
    with db:
        db.execute(
            "INSERT INTO sessions (id, arrival, status, argv, cwd, queued_at) VALUES ('s', 1, 'completed', '[]', '/', '')"
        )
    return db


def test_the_tty_migrations_keep_every_row_and_index_and_admit_the_tty_stream(tmp_path: Path) -> None:
    """A database of schema 5 reaches the current schema with its sessions, rows, row ids and indexes as they were, and stores tty rows."""
    path = tmp_path / "slotd.db"
    db = database_of_schema(path, 5)
    with db:
        for seq, stream in enumerate(["stdout", "stderr", "stdin", "system"], start=1):
            db.execute(
                "INSERT INTO transcript (id, session_id, seq, ts, stream, data) VALUES (?, 's', ?, 0, ?, ?)",
                (seq * 10, seq, stream, f"row {seq}".encode()),
            )
    indexes_before = set(db.execute("SELECT name, sql FROM sqlite_master WHERE tbl_name = 'transcript'"))
    db.close()

    store = Store(path)
    try:
        assert store.db.pragma("user_version") == SCHEMA_VERSION
        assert store.get_session("s").tty is False
        rows = list(store.db.execute("SELECT id, seq, stream, data FROM transcript ORDER BY seq"))
        assert rows == [
            (10, 1, "stdout", b"row 1"),
            (20, 2, "stderr", b"row 2"),
            (30, 3, "stdin", b"row 3"),
            (40, 4, "system", b"row 4"),
        ]
        indexes = set(
            store.db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'transcript'")
        )
        assert indexes == {(name, sql) for name, sql in indexes_before if name.startswith("transcript_by")}
        store.commit_batch(Batch(rows=[Row("s", 5, 0.0, "tty", b"\x1b[1mbold\x1b[0m\r\n")]))
        assert store.db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert store.db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        store.close()


def test_sessions_of_schema_8_read_back_as_no_restart(tmp_path: Path) -> None:
    """A database of schema 8 gains restart_of, null for the sessions it held, and stores it for new ones."""
    path = tmp_path / "slotd.db"
    database_of_schema(path, 8).close()

    store = Store(path)
    try:
        assert store.get_session("s").restart_of is None
        repeat = store.create_session(new_session(restart_of="s"))
        assert store.get_session(repeat.id).restart_of == "s"
    finally:
        store.close()


def test_database_from_a_newer_slotd_is_refused(store: Store, db_path: Path) -> None:
    """A database whose user_version is above SCHEMA_VERSION is refused rather than written to."""
    store.db.pragma("user_version", SCHEMA_VERSION + 1)

    with pytest.raises(SchemaTooNew, match="newer than this slotd knows"):
        Store(db_path)


def test_writer_connection_uses_wal_foreign_keys_and_synchronous_normal(store: Store) -> None:
    """The writer runs in WAL mode with foreign keys on, synchronous NORMAL, IMMEDIATE transactions and no autocheckpoint."""
    assert store.db.pragma("journal_mode") == "wal"
    assert store.db.pragma("foreign_keys") == 1
    assert store.db.pragma("synchronous") == 1  # NORMAL
    assert store.db.pragma("wal_autocheckpoint") == 0
    assert store.db.pragma("busy_timeout") >= 1000
    assert store.db.transaction_mode == "IMMEDIATE"


def test_reader_connection_is_read_only_with_foreign_keys_on(reader: Reader) -> None:
    """A Reader cannot write and still has foreign keys on, like every connection."""
    assert reader.db.pragma("foreign_keys") == 1
    assert reader.db.readonly("main")
    with pytest.raises(apsw.ReadOnlyError):
        reader.db.execute("DELETE FROM sessions")


# -- sessions --------------------------------------------------------------------------


def test_created_session_round_trips_with_json_fields(store: Store, reader: Reader) -> None:
    """A created session reads back equal, with argv, env and labels as they were and an arrival after earlier ones."""
    first = store.create_session(new_session())
    session = store.create_session(
        new_session(
            argv=["python3", "-c", "print('é\\x00')", "--flag=a b"],
            cwd="/srv/project",
            env={"TOKEN": "x=y", "EMPTY": ""},
            labels={"project": "slotd", "ticket": 42, "tags": ["a", "b"], "nested": {"ok": True}},
            priority=7,
        )
    )

    assert session.arrival > first.arrival
    assert store.get_session(session.id) == session
    assert reader.get_session(session.id) == session
    assert reader.get_session(str(uuid.uuid4())) is None


def test_find_session_accepts_exact_id_and_unique_prefix(store: Store) -> None:
    """find_session returns the one session whose id starts with the prefix, in any case, or None."""
    session = store.create_session(new_session("0a1b2c3d-0000-4000-8000-000000000001"))
    store.create_session(new_session("ffffffff-0000-4000-8000-000000000002"))

    assert store.find_session(session.id) == session
    assert store.find_session("0a1b") == session
    assert store.find_session("0A1B2C") == session
    assert store.find_session("0a1c") is None


def test_find_session_with_a_shared_prefix_is_ambiguous(store: Store) -> None:
    """A prefix two ids share raises AmbiguousPrefix listing both; a longer prefix picks one."""
    one = store.create_session(new_session("abcdef01-0000-4000-8000-000000000001"))
    two = store.create_session(new_session("abcdef02-0000-4000-8000-000000000002"))

    with pytest.raises(AmbiguousPrefix) as caught:
        store.find_session("abcdef0")
    assert sorted(caught.value.matches) == sorted([one.id, two.id])
    assert store.find_session("abcdef02") == two


def test_find_session_with_an_empty_prefix_finds_nothing(store: Store) -> None:
    """An empty prefix names no session, even when only one session exists."""
    store.create_session(new_session())

    assert store.find_session("") is None


def test_find_session_treats_like_wildcards_literally(store: Store) -> None:
    """A prefix with % or _ matches no id instead of acting as a LIKE wildcard."""
    store.create_session(new_session("abcdef01-0000-4000-8000-000000000001"))

    assert store.find_session("%") is None
    assert store.find_session("abcdef0_") is None
    assert store.find_session("a%") is None


def test_update_session_sets_columns_and_rejects_unknown_ones(store: Store) -> None:
    """update_session changes only the named columns, stores JSON columns as JSON and refuses names that are not columns."""
    session = store.create_session(new_session())

    store.update_session(session.id, labels={"agent": "b"}, reason="why not", stop_requested=True)
    updated = store.get_session(session.id)
    assert updated == dataclasses.replace(session, labels={"agent": "b"}, reason="why not", stop_requested=True)

    with pytest.raises(ValueError, match="not a session column"):
        store.update_session(session.id, colour="blue")
    with pytest.raises(ValueError, match="not a session column"):
        store.update_session(session.id, id="another")
    assert store.get_session(session.id) == updated


def test_transition_applies_only_from_the_expected_statuses(store: Store) -> None:
    """transition changes a session only when it is still in one of the given statuses, and returns it as changed."""
    session = store.create_session(new_session())
    started = utc_now()

    running = store.transition(session.id, ["queued"], status="running", slot=1, started_at=started)
    assert running is not None
    assert (running.status, running.slot, running.started_at) == ("running", 1, started)

    assert store.transition(session.id, ["queued"], status="cancelled", slot=None) is None
    assert store.get_session(session.id) == running
    assert store.transition(str(uuid.uuid4()), ["queued"], status="cancelled") is None


def test_delete_session_reports_whether_it_existed(store: Store) -> None:
    """delete_session removes the session and says True, and says False for an id it does not have."""
    session = store.create_session(new_session())

    assert store.delete_session(session.id) is True
    assert store.get_session(session.id) is None
    assert store.delete_session(session.id) is False


def test_list_sessions_orders_checkpoint_live_queued_then_ended(store: Store) -> None:
    """ps order: waiting_checkpoint first, then live by slot, then queued by priority and arrival, then ended newest first."""
    made: dict[str, Session] = {}

    def make(name: str, status: str, **fields: Any) -> None:
        made[name] = store.create_session(new_session(status=status, **fields))

    make("ended-old", "completed", exit_code=0, ended_at=iso_from_unix(time.time() - 3 * DAY))
    make("queued-low-early", "queued", priority=0)
    make("running-3", "running", slot=3)
    make("queued-high", "queued", priority=5)
    make("checkpoint-2", "waiting_checkpoint", slot=2)
    make("ended-new", "failed", exit_code=1, ended_at=iso_from_unix(time.time() - DAY))
    make("paused-1", "paused", slot=1)
    make("queued-low-late", "queued", priority=0)
    make("queued-negative", "queued", priority=-1)
    make("ended-newest", "killed", signal=15, ended_at=utc_now())

    order = [
        "checkpoint-2",
        "paused-1",
        "running-3",
        "queued-high",
        "queued-low-early",
        "queued-low-late",
        "queued-negative",
        "ended-newest",
        "ended-new",
        "ended-old",
    ]
    by_id = {session.id: name for name, session in made.items()}
    assert [by_id[s.id] for s in store.list_sessions()] == order
    assert [by_id[s.id] for s in store.list_sessions(statuses=["queued", "completed"])] == [
        "queued-high",
        "queued-low-early",
        "queued-low-late",
        "queued-negative",
        "ended-old",
    ]
    assert [by_id[s.id] for s in store.list_sessions(limit=3)] == order[:3]


def test_ended_page_walks_every_ended_session_once_latest_first_past_damaged_rows(store: Store) -> None:
    """ended_page, a page at a time, lists every matching ended session once in list_sessions' order (equal end times, no end time and a damaged row included) and count_ended counts them."""
    store.create_session(new_session(labels={"team": "a"}))  # queued: not ended
    ended = [
        store.create_session(
            new_session(status="completed", ended_at=f"2026-01-01T00:00:{second // 2:02d}+00:00", labels={"team": team})
        )
        for second, team in enumerate("abababab")
    ]
    killed = store.create_session(
        new_session(status="killed", ended_at="2026-01-02T00:00:00+00:00", labels={"team": "a"})
    )
    no_end = [store.create_session(new_session(status="failed", labels={"team": "a"})) for _ in range(3)]
    damaged = ended[4]
    with store.write():
        store.db.execute('UPDATE sessions SET labels = \'{"team": "a", broken\' WHERE id = ?', (damaged.id,))

    def walk(statuses: list[str] | None, labels: dict | None, size: int) -> list[str]:
        listed, cursor = [], None
        while True:
            page, cursor = store.ended_page(statuses, labels, cursor, size)
            listed += [session.id for session in page]
            if cursor is None:
                return listed

    everything = [killed.id, *(s.id for s in reversed(ended) if s is not damaged), *(s.id for s in reversed(no_end))]
    assert [s.id for s in store.list_sessions(statuses=list(ENDED_STATUSES))] == everything
    for size in (1, 2, 3, 100):
        assert walk(None, None, size) == everything
    assert walk(["completed"], None, 2) == [s.id for s in reversed(ended) if s is not damaged]
    assert walk(None, {"team": "a"}, 2) == [
        killed.id,
        ended[6].id,
        ended[2].id,
        ended[0].id,
        *(s.id for s in reversed(no_end)),
    ]
    assert store.count_ended(None) == 12 and store.count_ended({"team": "b"}) == 4


def test_list_sessions_filters_by_labels(store: Store) -> None:
    """A label filter keeps only sessions whose labels hold every given key with the given value."""
    wanted = store.create_session(new_session(labels={"project": "slotd", "ticket": 7}))
    store.create_session(new_session(labels={"project": "slotd", "ticket": 8}))
    store.create_session(new_session(labels={"project": "other"}))
    store.create_session(new_session())

    assert [s.id for s in store.list_sessions(labels={"project": "slotd", "ticket": 7})] == [wanted.id]
    assert len(store.list_sessions(labels={"project": "slotd"})) == 2
    assert store.list_sessions(labels={"missing": "x"}) == []


def test_sessions_with_status_and_next_queued_follow_priority_then_arrival(store: Store) -> None:
    """Queued sessions come out highest priority first, first in first out within a priority."""
    assert store.next_queued() is None
    low_first = store.create_session(new_session(priority=0))
    high_late = store.create_session(new_session(priority=3))
    low_second = store.create_session(new_session(priority=0))
    store.create_session(new_session(status="running", slot=1, priority=9))
    high_later = store.create_session(new_session(priority=3))

    queued = store.sessions_with_status(["queued"])
    assert [s.id for s in queued] == [high_late.id, high_later.id, low_first.id, low_second.id]
    assert store.count_with_status(["queued"]) == 4
    assert store.next_queued() == high_late

    store.transition(high_late.id, ["queued"], status="running", slot=2)
    assert store.next_queued() == high_later


# -- one live session per slot, enforced by the database ---------------------------------


def test_database_refuses_a_second_live_session_in_a_busy_slot(store: Store) -> None:
    """A raw INSERT of a second live session into a slot already held fails with apsw.ConstraintError from the partial unique index."""
    store.create_session(new_session(status="running", slot=2))

    for arrival, status in enumerate(("running", "paused", "waiting_checkpoint"), start=100):
        with pytest.raises(apsw.ConstraintError, match=r"sessions\.slot"):
            insert_raw(store.db, str(uuid.uuid4()), status, 2, arrival)

    insert_raw(store.db, str(uuid.uuid4()), "running", 3, 200)  # another slot is free
    assert store.count_with_status(["running"]) == 2


def test_update_cannot_move_a_live_session_into_a_busy_slot(store: Store) -> None:
    """Starting a queued session in a slot another live session holds fails and leaves it queued."""
    store.create_session(new_session(status="paused", slot=1))
    queued = store.create_session(new_session())

    with pytest.raises(apsw.ConstraintError):
        store.transition(queued.id, ["queued"], status="running", slot=1)
    assert store.get_session(queued.id) == queued


def test_ended_sessions_keep_no_slot_and_free_it(store: Store) -> None:
    """Ended sessions hold a NULL slot, any number of them, and the slot a session ended in can be taken again."""
    running = store.create_session(new_session(status="running", slot=1))
    store.transition(running.id, ["running"], status="completed", slot=None, exit_code=0, ended_at=utc_now())
    insert_raw(store.db, str(uuid.uuid4()), "failed", None, 100)
    insert_raw(store.db, str(uuid.uuid4()), "lost", None, 101)

    again = store.create_session(new_session(status="running", slot=1))

    assert store.get_session(again.id).slot == 1
    assert store.count_with_status(ENDED_STATUSES) == 3


@pytest.mark.parametrize(
    "status, slot",
    [("running", None), ("completed", 1), ("queued", 2)],
    ids=["live-without-slot", "ended-with-slot", "queued-with-slot"],
)
def test_database_refuses_a_slot_that_does_not_match_the_status(store: Store, status: str, slot: int | None) -> None:
    """A live session must hold a slot and any other must not: the CHECK constraint refuses the mismatch."""
    with pytest.raises(apsw.ConstraintError, match="CHECK"):
        insert_raw(store.db, str(uuid.uuid4()), status, slot, 1)


# -- batches and transcripts --------------------------------------------------------------


def test_commit_batch_stores_rows_positions_and_updates(store: Store, reader: Reader) -> None:
    """One commit_batch stores rows of several sessions, their spool positions, byte counts and status changes."""
    one = store.create_session(new_session(status="running", slot=1))
    two = store.create_session(new_session(status="running", slot=2))
    batch = Batch()
    for row in transcript_rows(one.id, 3) + transcript_rows(two.id, 2):
        batch.add_row(row)
    batch.positions[one.id] = (2, 4096)
    batch.positions[two.id] = (0, 77)
    batch.update(two.id, status="completed", slot=None, exit_code=0)
    batch.update(two.id, ended_at="2026-01-01T00:00:00+00:00")
    assert batch and batch.size == sum(len(r.data) for r in batch.rows)

    store.commit_batch(batch)

    assert list(reader.iter_transcript(one.id)) == transcript_rows(one.id, 3)
    assert list(reader.iter_transcript(two.id)) == transcript_rows(two.id, 2)
    after_one, after_two = reader.get_session(one.id), reader.get_session(two.id)
    assert (after_one.spool_segment, after_one.spool_offset) == (2, 4096)
    assert (after_two.spool_segment, after_two.spool_offset) == (0, 77)
    assert after_one.transcript_bytes == sum(len(r.data) for r in transcript_rows(one.id, 3))
    assert (after_two.status, after_two.slot, after_two.exit_code) == ("completed", None, 0)
    assert after_two.ended_at == "2026-01-01T00:00:00+00:00"


def test_commit_batch_is_all_or_nothing(store: Store, reader: Reader) -> None:
    """When any part of a batch fails, none of its rows, positions or updates are stored."""
    one = store.create_session(new_session(status="running", slot=1))
    queued = store.create_session(new_session())
    commit_rows(store, transcript_rows(one.id, 2))
    before = reader.get_session(one.id)

    batch = Batch()
    for row in transcript_rows(one.id, 3, start=3):
        batch.add_row(row)
    batch.positions[one.id] = (5, 5)
    # Applied last, and impossible: slot 1 is taken.
    batch.update(queued.id, status="running", slot=1)
    with pytest.raises(apsw.ConstraintError):
        store.commit_batch(batch)

    assert reader.last_seq(one.id) == 2
    assert reader.get_session(one.id) == before
    assert reader.get_session(queued.id) == queued

    duplicate = Batch()
    duplicate.add_row(transcript_rows(one.id, 1, start=3)[0])
    duplicate.add_row(transcript_rows(one.id, 1, start=2)[0])  # seq 2 is already stored
    with pytest.raises(apsw.ConstraintError):
        store.commit_batch(duplicate)
    assert reader.transcript_stats(one.id)["rows"] == 2


@pytest.fixture
def transcript(store: Store) -> tuple[str, list[Row]]:
    """A session with 50 rows in stdout, stderr and system, and another session's rows beside them."""
    session = store.create_session(new_session(status="running", slot=1))
    other = store.create_session(new_session(status="running", slot=2))
    rows = transcript_rows(session.id, 50)
    commit_rows(store, rows[:20])
    commit_rows(store, transcript_rows(other.id, 30) + rows[20:])
    return session.id, rows


def test_rows_after_pages_forward_with_stream_and_time_filters(
    reader: Reader, transcript: tuple[str, list[Row]]
) -> None:
    """rows_after returns rows after a sequence number, oldest first, limited, filtered by stream and by time."""
    session_id, rows = transcript

    assert reader.rows_after(session_id, 0, 5) == rows[:5]
    assert reader.rows_after(session_id, 45, 100) == rows[45:]
    assert reader.rows_after(session_id, 50, 100) == []
    stderr = [r for r in rows if r.stream == "stderr"]
    assert reader.rows_after(session_id, 0, 100, streams=["stderr"]) == stderr
    assert reader.rows_after(session_id, 0, 100, streams=["stdout", "system"]) == [
        r for r in rows if r.stream != "stderr"
    ]
    assert reader.rows_after(session_id, 0, 100, since_ts=1040.0) == rows[39:]
    assert (
        reader.rows_after(session_id, 0, 3, streams=["stderr"], since_ts=1020.0)
        == [r for r in stderr if r.ts >= 1020.0][:3]
    )


def test_rows_before_reads_backwards(reader: Reader, transcript: tuple[str, list[Row]]) -> None:
    """rows_before returns rows before a sequence number, newest first, limited and filtered by stream."""
    session_id, rows = transcript

    assert reader.rows_before(session_id, 51, 3) == rows[:-4:-1]
    assert reader.rows_before(session_id, 3, 10) == [rows[1], rows[0]]
    assert reader.rows_before(session_id, 1, 10) == []
    assert (
        reader.rows_before(session_id, 51, 2, streams=["system"]) == [r for r in rows if r.stream == "system"][:-3:-1]
    )


def test_a_stream_filter_finds_a_rare_streams_rows_without_walking_the_session(store: Store, reader: Reader) -> None:
    """The last stderr rows of a session with 100,000 stdout rows after them are found in a few hundred SQLite steps, forwards and backwards."""
    session = store.create_session(new_session(status="running", slot=1))
    early = [Row(session.id, seq, 1000.0 + seq, "stderr", b"warning %d\n" % seq) for seq in (1, 2)]
    stdout = [Row(session.id, seq, 1000.0 + seq, "stdout", b"line %d\n" % seq) for seq in range(3, 100_003)]
    commit_rows(store, early + stdout)
    steps = 0

    def count_steps() -> bool:
        nonlocal steps
        steps += 1
        return False  # go on

    reader.db.set_progress_handler(count_steps, 100)  # called every 100 VM instructions
    assert reader.rows_before(session.id, 100_003, 10, streams=["stderr"]) == early[::-1]
    assert reader.rows_after(session.id, 2, 10, streams=["stderr"]) == []
    assert reader.rows_after(session.id, 0, 10, streams=["stderr"], since_ts=1001.5) == early[1:]
    # Walking the session's rows would take millions of instructions.
    assert steps * 100 < 10_000
    reader.db.set_progress_handler(None)


@pytest.mark.parametrize("page_size", [1, 7, 10, 49, 50, 51, 500])
def test_iter_transcript_pages_through_every_row_without_gaps(
    reader: Reader, transcript: tuple[str, list[Row]], page_size: int
) -> None:
    """iter_transcript yields every row once, in order, whatever the page size against the row count."""
    session_id, rows = transcript

    assert list(reader.iter_transcript(session_id, page_size=page_size)) == rows
    assert list(reader.iter_transcript(session_id, after_seq=33, page_size=page_size)) == rows[33:]
    assert list(reader.iter_transcript(session_id, page_size=page_size, streams=["stdout"])) == [
        r for r in rows if r.stream == "stdout"
    ]


def test_transcript_is_byte_exact(store: Store, reader: Reader) -> None:
    """Concatenating a session's stdout rows gives back exactly the bytes stored, NUL and invalid UTF-8 included."""
    session = store.create_session(new_session(status="running", slot=1))
    chunks = [bytes(range(256)), b"\x00\x00", b"\xc3(\xa0\xa1", b"", b"plain\n"]
    commit_rows(store, [Row(session.id, i, 1.0, "stdout", data) for i, data in enumerate(chunks, start=1)])

    assert b"".join(r.data for r in reader.iter_transcript(session.id, streams=["stdout"])) == b"".join(chunks)


def test_last_seq_and_transcript_stats(reader: Reader, store: Store, transcript: tuple[str, list[Row]]) -> None:
    """last_seq and transcript_stats report a session's row count, bytes and highest sequence number, zero when empty."""
    session_id, rows = transcript
    empty = store.create_session(new_session())

    assert reader.last_seq(session_id) == 50
    assert reader.transcript_stats(session_id) == {"rows": 50, "bytes": sum(len(r.data) for r in rows), "last_seq": 50}
    assert reader.last_seq(empty.id) == 0
    assert reader.transcript_stats(empty.id) == {"rows": 0, "bytes": 0, "last_seq": 0}


def test_deleting_a_session_deletes_its_rows(store: Store, reader: Reader, transcript: tuple[str, list[Row]]) -> None:
    """Deleting a session removes its transcript rows by cascade and leaves other sessions' rows alone."""
    session_id, _ = transcript
    total = store.db.execute("SELECT count(*) FROM transcript").get

    store.update_session(session_id, status="completed", slot=None)
    assert store.delete_session(session_id)

    assert reader.transcript_stats(session_id)["rows"] == 0
    assert store.db.execute("SELECT count(*) FROM transcript").get == total - 50


def test_prune_deletes_only_ended_sessions_older_than_the_cutoff(store: Store, reader: Reader) -> None:
    """prune removes ended sessions that ended before the cutoff, with their rows, and keeps recent, live and queued ones."""
    now = time.time()
    old = {
        status: store.create_session(new_session(status=status, ended_at=iso_from_unix(now - 100 * DAY)))
        for status in ENDED_STATUSES
    }
    recent = store.create_session(new_session(status="completed", ended_at=iso_from_unix(now - DAY)))
    live = store.create_session(new_session(status="running", slot=1, started_at=iso_from_unix(now - 200 * DAY)))
    queued = store.create_session(new_session(queued_at=iso_from_unix(now - 200 * DAY)))
    for session in [*old.values(), recent, live]:
        commit_rows(store, transcript_rows(session.id, 3))

    pruned = store.prune(iso_from_unix(now - 90 * DAY), [*ENDED_STATUSES, "running", "queued"])

    assert sorted(pruned) == sorted(s.id for s in old.values())
    assert {s.id for s in reader.list_sessions()} == {recent.id, live.id, queued.id}
    for session in old.values():
        assert reader.transcript_stats(session.id)["rows"] == 0
    assert reader.transcript_stats(recent.id)["rows"] == 3


def test_prune_without_cutoff_deletes_every_ended_session_of_the_given_statuses(store: Store) -> None:
    """prune with no cutoff deletes every ended session whose status is listed, and no other."""
    failed = store.create_session(new_session(status="failed", ended_at=utc_now()))
    completed = store.create_session(new_session(status="completed", ended_at=utc_now()))
    store.create_session(new_session(status="running", slot=1))

    assert store.prune(None, ["failed", "running"]) == [failed.id]
    assert store.get_session(completed.id) is not None
    assert store.count_with_status(["running"]) == 1


def test_arrival_keeps_counting_after_a_prune_empties_the_table(store: Store, db_path: Path) -> None:
    """A session created after every session was pruned, even after a reopen, arrives after all the deleted ones."""
    ended = [store.create_session(new_session(status="completed", ended_at=utc_now())) for _ in range(3)]
    assert store.prune(None, ENDED_STATUSES) and store.count_with_status(ENDED_STATUSES) == 0

    assert store.create_session(new_session()).arrival == ended[-1].arrival + 1
    store.db.execute("DELETE FROM sessions")  # the queued one too: nothing left to count from
    store.close()
    reopened = Store(db_path)
    try:
        assert reopened.create_session(new_session()).arrival == ended[-1].arrival + 2
    finally:
        reopened.close()


def test_arrival_follows_sessions_stored_before_the_counter(store: Store) -> None:
    """A database whose sessions predate the arrival counter goes on after its largest arrival."""
    insert_raw(store.db, str(uuid.uuid4()), "completed", None, 41)

    assert store.create_session(new_session()).arrival == 42


def test_settings_round_trip_and_overwrite(store: Store) -> None:
    """A setting reads back as set, a second set replaces it, and a missing one gives the default."""
    assert store.get_setting("boot_id", "none") == "none"
    store.set_setting("boot_id", "abc")
    store.set_setting("boot_id", "def")
    assert store.get_setting("boot_id") == "def"


# -- outside readers ------------------------------------------------------------------------


def test_outside_readers_read_while_the_writer_holds_a_write_transaction(store: Store, db_path: Path) -> None:
    """A second APSW connection and Python's sqlite3 read the last committed state at once while a write transaction is open."""
    session = store.create_session(new_session(status="running", slot=1))
    commit_rows(store, transcript_rows(session.id, 5))

    outside = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=0)
    apsw_reader = Reader(db_path)
    apsw_reader.db.set_busy_timeout(0)  # a lock would fail at once instead of waiting
    contender = apsw.Connection(str(db_path))
    contender.set_busy_timeout(0)
    try:
        with store.db:
            store.db.execute(
                "INSERT INTO transcript (session_id, seq, ts, stream, data) VALUES (?, 6, 0, 'stdout', x'00')",
                (session.id,),
            )
            # The write lock is really held: another writer cannot begin.
            with pytest.raises(apsw.BusyError):
                contender.execute("BEGIN IMMEDIATE")

            count = "SELECT count(*) FROM transcript WHERE session_id = ?"
            assert outside.execute(count, (session.id,)).fetchone() == (5,)
            assert apsw_reader.last_seq(session.id) == 5
            assert outside.execute("SELECT status FROM sessions WHERE id = ?", (session.id,)).fetchone() == ("running",)

        assert outside.execute(count, (session.id,)).fetchone() == (6,)
        assert apsw_reader.last_seq(session.id) == 6
    finally:
        contender.close()
        apsw_reader.close()
        outside.close()


def test_seq_before_time_finds_where_rows_reach_a_time_across_a_gap(store: Store, reader: Reader) -> None:
    """seq_before_time gives the seq after which rows reach a time, with a retention gap in seq, before the first row and after the last."""
    session = store.create_session(new_session(status="running", slot=1))
    # ts = 1000 + seq; seq 11..39 are gone (a truncation gap).
    batch = Batch()
    for row in transcript_rows(session.id, 10) + transcript_rows(session.id, 20, start=40):
        batch.add_row(row)
    store.commit_batch(batch)
    seqs = [row.seq for row in reader.iter_transcript(session.id)]
    for since in [0.0, 1001.0, 1001.5, 1005.0, 1010.0, 1010.5, 1025.0, 1040.0, 1041.0, 1059.0, 1059.5, 5000.0]:
        after = reader.seq_before_time(session.id, since)
        # Exactly the rows at or after `since` lie beyond it.
        assert [seq for seq in seqs if seq > after] == [seq for seq in seqs if 1000.0 + seq >= since], since
    assert reader.seq_before_time(new_session().id, 1000.0) == 0
