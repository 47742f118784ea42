"""model.py: a leaf slotctl loads without apsw, whose vocabulary the database and the wire agree with."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import apsw

from supervisor.model import ALL_STATUSES, SESSION_FIELDS, STREAMS, LiveState, session_view
from supervisor.store import Session, Store


def modules_loaded_by(statement: str) -> set[str]:
    """The modules a fresh Python has loaded after running statement."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(done.stdout))


def test_slotctl_loads_neither_apsw_nor_trio() -> None:
    """Importing slotctl's module loads neither apsw nor trio (the client needs no database and no event loop), nor the request classes and argcomplete it does not use on most runs (it starts faster)."""
    loaded = modules_loaded_by("import supervisor.cli")
    assert not {name for name in loaded if name.split(".")[0] in ("apsw", "trio", "argcomplete")}
    assert "supervisor.protocol" not in loaded and "supervisor.wire" in loaded


def test_the_vocabulary_imports_only_the_standard_library() -> None:
    """model.py imports no other slotd module and nothing outside the standard library."""
    loaded = modules_loaded_by("import supervisor.model") - modules_loaded_by("pass")
    outside = {name for name in loaded if name.split(".")[0] not in sys.stdlib_module_names}
    assert outside == {"supervisor", "supervisor.model"}


def test_the_database_accepts_every_status_and_stream_of_the_vocabulary_and_no_other(tmp_path) -> None:
    """The schema's CHECK constraints (fixed in its migrations) name exactly the statuses and streams model.py has."""
    store = Store(tmp_path / "slotd.db")
    try:
        insert = (
            "INSERT INTO sessions (id, arrival, status, slot, argv, cwd, queued_at) VALUES (?, ?, ?, ?, '[]', '/', '')"
        )
        for arrival, status in enumerate([*ALL_STATUSES, "unknown"]):
            slot = 1 if status in ("running", "paused", "waiting_checkpoint") else None
            try:
                with store.db:
                    store.db.execute("DELETE FROM sessions")
                    store.db.execute(insert, (f"s{arrival}", arrival, status, slot))
            except apsw.ConstraintError:
                assert status == "unknown"
            else:
                assert status != "unknown"
        with store.db:
            store.db.execute(insert, ("t", len(ALL_STATUSES) + 1, "queued", None))
        for seq, stream in enumerate([*STREAMS, "unknown"]):
            try:
                with store.db:
                    store.db.execute(
                        "INSERT INTO transcript (session_id, seq, ts, stream, data) VALUES ('t', ?, 0, ?, x'')",
                        (seq, stream),
                    )
            except apsw.ConstraintError:
                assert stream == "unknown"
            else:
                assert stream != "unknown"
    finally:
        store.close()


def test_every_stored_field_is_on_the_wire_but_the_spool_position() -> None:
    """A session object carries every field of the stored session but where ingest has read its spool to; a new column must be placed on one side."""
    stored = [field.name for field in dataclasses.fields(Session)]
    assert set(stored) - set(SESSION_FIELDS) == {"spool_dir", "spool_segment", "spool_offset"}
    session = Session(
        id="s",
        arrival=1,
        argv=["true"],
        cwd="/",
        status="running",
        queued_at="",
        slot=1,
        spool_dir="/run/x",
        spool_offset=9,
    )
    assert list(session_view(session)) == list(SESSION_FIELDS)
    assert session_view(session, LiveState(output_blocked="full")) == {
        **session_view(session),
        "output_blocked": "full",
    }
