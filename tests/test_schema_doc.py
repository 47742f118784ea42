"""docs/schema.md stays true to the database, and its views answer as it says, read from
a connection of their own as a person's sqlite3 shell would."""

from __future__ import annotations

import re
import time
from pathlib import Path

import apsw

from supervisor.model import unix_from_iso
from tests.harness import DaemonHandle

DOC = Path(__file__).resolve().parent.parent / "docs" / "schema.md"


def section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"^#+ {re.escape(title)}\s*$(.*?)(?=^#+ |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match is not None, f"docs/schema.md has no '{title}' section"
    return match.group(1)


def documented_names(text: str) -> set[str]:
    """Every `name` in the first cell of a table row (a cell may name several)."""
    names: set[str] = set()
    for row in re.findall(r"^\|([^|]*)\|", text, re.MULTILINE):
        names.update(re.findall(r"`([^`]+)`", row))
    return names


def test_every_table_column_and_view_is_documented(daemon: DaemonHandle) -> None:
    """Each column of sessions and transcript, each view and each view column in the database is in docs/schema.md, and nothing else is."""
    db = apsw.Connection(str(daemon.database), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        for table in ("sessions", "transcript"):
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            assert documented_names(section(f"`{table}`")) == columns, table
        views = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}
        listed = section("Views")
        assert documented_names(listed) == views
        for view in views:
            row = re.search(rf"^\| `{view}` \|(.*)$", listed, re.MULTILINE)
            assert row is not None, view
            columns = {info[1] for info in db.execute(f"PRAGMA table_info({view})")}
            assert set(re.findall(r"`([^`]+)`", row.group(1))) >= columns, view
    finally:
        db.close()


def test_the_views_give_text_local_times_and_durations(daemon: DaemonHandle) -> None:
    """transcript_text has a row's bytes as text with its local time; session_times has how long a session waited and ran."""
    session_id = daemon.start_session(["sh", "-c", "sleep 0.3; echo 'héllo wörld'"])["id"]
    ended = daemon.wait_ended(session_id)
    db = apsw.Connection(str(daemon.database), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        (local_time, text), *_ = db.execute(
            "SELECT local_time, text FROM transcript_text WHERE session_id = ? AND stream = 'stdout'", (session_id,)
        )
        assert text == "héllo wörld\n"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", local_time)
        assert abs(time.mktime(time.strptime(local_time[:19], "%Y-%m-%d %H:%M:%S")) - time.time()) < 60
        ((ran, waited, started_local),) = db.execute(
            "SELECT ran_seconds, waited_seconds, started_local FROM session_times WHERE id = ?", (session_id,)
        )
        expected = unix_from_iso(ended["ended_at"]) - unix_from_iso(ended["started_at"])
        assert 0.3 <= ran and abs(ran - expected) < 0.01 and 0 <= waited < 5
        assert time.strftime("%Y-%m-%d %H:%M", time.localtime(unix_from_iso(ended["started_at"]))) in started_local
    finally:
        db.close()
