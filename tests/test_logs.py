"""slotctl logs as journalctl and docker users read it: timestamps, --since/--until in
their forms, stderr apart, markers on lines of their own; through the real slotctl
against a real daemon."""

from __future__ import annotations

import datetime
import sqlite3
import time

import pytest

from supervisor.cli.times import Bound, parse_bound
from supervisor.store import Row
from tests.harness import DaemonHandle
from tests.helpers import py

# A zone with a half-hour offset and no daylight saving, that needs no tz database: a
# time shown or read as UTC, or as the machine's zone, cannot pass for it.
TZ = "XST-5:30"
XST = datetime.timezone(datetime.timedelta(hours=5, minutes=30))


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch):
    """TZ set to XST for this process (time.tzset) and the slotctl it runs."""
    monkeypatch.setenv("TZ", TZ)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def rows_of(daemon: DaemonHandle, session_id: str) -> list[Row]:
    with daemon.reader() as reader:
        return list(reader.iter_transcript(session_id))


def ended_session(daemon: DaemonHandle, code: str) -> str:
    session = daemon.start_session(py(code))
    daemon.wait_ended(session["id"])
    return session["id"]


def stamp(ts: float) -> bytes:
    return datetime.datetime.fromtimestamp(ts, XST).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3].encode()


def test_timestamps_prefix_every_line_with_the_local_time_of_its_row(daemon, local_zone):
    """logs -t begins each line with its row's time in local time, every line of a row with that row's time, a line continued in a later row once."""
    session_id = ended_session(
        daemon,
        "import sys, time\n"
        "sys.stdout.write('one\\ntwo\\n'); sys.stdout.flush(); time.sleep(0.3)\n"
        "sys.stdout.write('thr'); sys.stdout.flush(); time.sleep(0.3)\n"
        "sys.stdout.write('ee\\n')",
    )
    rows = [row for row in rows_of(daemon, session_id) if row.stream == "stdout"]
    assert [row.data for row in rows] == [b"one\ntwo\n", b"thr", b"ee\n"]
    result = daemon.cli("logs", "-t", "--no-markers", session_id)
    assert result.returncode == 0, result.stderr
    first, second, _ = (stamp(row.ts) for row in rows)
    assert result.stdout == first + b" one\n" + first + b" two\n" + second + b" three\n"


def test_stderr_goes_to_slotctls_stderr_unless_merged(daemon):
    """In the human format the session's stderr is written to slotctl's stderr, and with --merge to its stdout in order."""
    session_id = ended_session(
        daemon,
        "import sys, time\nprint('out', flush=True); time.sleep(0.2)\nprint('err', file=sys.stderr, flush=True)",
    )
    split = daemon.cli("logs", "--no-markers", session_id)
    assert (split.stdout, split.stderr) == (b"out\n", b"err\n")
    merged = daemon.cli("logs", "--no-markers", "--merge", session_id)
    assert (merged.stdout, merged.stderr) == (b"out\nerr\n", b"")


def test_markers_begin_their_own_line_and_no_markers_drops_them(daemon):
    """A [slotd] line after a last line without a newline starts on a line of its own; --no-markers leaves the [slotd] lines out."""
    session_id = ended_session(daemon, "import sys; sys.stdout.write('prompt> ')")
    lines = daemon.cli("logs", session_id).stdout.decode().split("\n")
    assert lines[0].startswith("[slotd] started in slot")
    assert lines[1] == "prompt> "
    assert lines[2].startswith("[slotd] ") and lines[-1] == ""
    assert daemon.cli("logs", "--no-markers", session_id).stdout == b"prompt> "


def test_since_and_until_take_relative_local_iso_times_and_sequence_numbers(daemon, local_zone):
    """--since and --until bound the rows by relative times, local times with a date, ISO times with a zone, and sequence numbers."""
    session_id = ended_session(
        daemon, "import os, time\nprint('old', flush=True); time.sleep(0.3)\nprint('new', flush=True)"
    )
    # Make the first rows two hours old, as if the session had run that long.
    daemon.shutdown()
    with sqlite3.connect(daemon.database) as db:
        db.execute("UPDATE transcript SET ts = ts - 7200 WHERE session_id = ? AND seq <= 2", (session_id,))
    db.close()
    daemon.start()
    rows = rows_of(daemon, session_id)
    assert rows[1].data == b"old\n" and rows[2].data == b"new\n"
    between = datetime.datetime.fromtimestamp(rows[1].ts + 3600, XST)

    def logs(*bounds: str) -> bytes:
        result = daemon.cli("logs", "--no-markers", *bounds, session_id)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert logs("--since", "1h") == b"new\n"
    assert logs("--since", "3 hours ago", "--until", "60 min ago") == b"old\n"
    assert logs("--since", between.strftime("%Y-%m-%d %H:%M")) == b"new\n"
    assert logs("--until", between.astimezone(datetime.UTC).isoformat()) == b"old\n"
    assert logs("--since", "2", "--until", "3") == b"new\n"
    assert logs("--until", "2") == b"old\n"


def test_a_bound_in_no_known_form_is_a_usage_error(shared_daemon):
    """An unreadable --since value exits 2 with a message listing the forms it may take; --until with -f and -t with --raw are refused."""
    bad = shared_daemon.cli("logs", "--since", "last tuesday", "x")
    assert bad.returncode == 2
    assert b"'last tuesday'" in bad.stderr and b"10 min ago" in bad.stderr
    assert shared_daemon.cli("logs", "--until", "5", "-f", "x").returncode == 2
    assert shared_daemon.cli("logs", "-t", "--raw", "x").returncode == 2


def test_logs_until_bounds_rows_tails_and_last_seq(daemon):
    """The logs request with until_seq or until_time sends only rows up to it, a tail ends there, and last_seq does not pass it."""
    session_id = ended_session(daemon, "import time\nfor i in range(4): print(i, flush=True); time.sleep(0.1)")
    rows = rows_of(daemon, session_id)
    assert [row.data for row in rows[1:5]] == [b"0\n", b"1\n", b"2\n", b"3\n"]
    with daemon.client() as client:
        sent = list(client.messages("logs", session=session_id, until_seq=3))
        assert [m["row"]["seq"] for m in sent[:-1]] == [1, 2, 3] and sent[-1]["result"]["last_seq"] == 3
        # Between rows 3 and 4 (0.1 s apart): at a row's own time, microseconds round.
        before = datetime.datetime.fromtimestamp((rows[2].ts + rows[3].ts) / 2, datetime.UTC).isoformat()
        messages = client.messages("logs", session=session_id, tail=2, until_time=before)
        tail = [m["row"]["seq"] for m in messages if "row" in m]
        assert tail == [2, 3]
        refused = list(client.messages("logs", session=session_id, until_time="soon"))[-1]
        assert refused["error"]["code"] == "invalid_argument" and "'until_time'" in refused["error"]["message"]


NOW = datetime.datetime(2026, 11, 29, 18, 30, 0, tzinfo=XST)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", Bound(42, None)),
        ("30s", NOW - datetime.timedelta(seconds=30)),
        ("10m", NOW - datetime.timedelta(minutes=10)),
        ("2h", NOW - datetime.timedelta(hours=2)),
        ("1d", NOW - datetime.timedelta(days=1)),
        ("10 min ago", NOW - datetime.timedelta(minutes=10)),
        ("1.5 hours ago", NOW - datetime.timedelta(minutes=90)),
        ("18:24", datetime.datetime(2026, 11, 29, 18, 24, tzinfo=XST)),
        ("2026-11-28 18:24", datetime.datetime(2026, 11, 28, 18, 24, tzinfo=XST)),
        ("2026-11-28T18:24:05Z", datetime.datetime(2026, 11, 28, 18, 24, 5, tzinfo=datetime.UTC)),
        ("2026-11-28T18:24:05+01:00", datetime.datetime(2026, 11, 28, 17, 24, 5, tzinfo=datetime.UTC)),
        ("yesterday", datetime.datetime(2026, 11, 28, tzinfo=XST)),
    ],
)
def test_a_bound_reads_as_journalctl_reads_it(local_zone, text, expected):
    """A --since/--until value is a sequence number, a time ago, a local time (today's, or on a date), or ISO with its zone."""
    if isinstance(expected, datetime.datetime):
        expected = Bound(None, expected.astimezone(datetime.UTC).isoformat(timespec="microseconds"))
    assert parse_bound(text, NOW) == expected
