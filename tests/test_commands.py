"""Sessions go out of the daemon as the view: its fields, never the spool position."""

from __future__ import annotations

from supervisor.model import LIVE_FIELDS, SESSION_FIELDS
from tests.conftest import py


def test_session_objects_carry_exactly_the_fields_of_the_view(daemon) -> None:
    """start, follow, show, ps and stop send sessions with the view's fields (and their own extras), never the spool position."""
    started = daemon.start_session(py("print('hi')"))
    assert list(started) == list(SESSION_FIELDS)
    with daemon.client() as client:
        followed = [message for message in client.messages("follow", session=started["id"]) if "ok" in message][0]["result"]
    assert list(followed) == [*SESSION_FIELDS, "last_seq"]
    assert list(daemon.session(started["id"])) == [*SESSION_FIELDS, *LIVE_FIELDS, "transcript"]
    sleeper = daemon.start_session(py("import time; time.sleep(60)"))
    assert list(daemon.request("stop", session=sleeper["id"])) == list(SESSION_FIELDS)
    assert [list(session) for session in daemon.request("ps")] == [[*SESSION_FIELDS, *LIVE_FIELDS]] * 2
