"""The exit-status tables: supervisor/errors.py and the README say the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.errors import CliExit, DaemonExit

README = Path(__file__).resolve().parent.parent / "README.md"


def documented_statuses(program: str) -> list[int]:
    """The statuses in the README's table headed "| `program` exits |"."""
    lines = README.read_text().splitlines()
    start = lines.index(f"| `{program}` exits | when |")
    statuses = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        statuses.append(int(line.split("|")[1]))
    return statuses


@pytest.mark.parametrize(("program", "table"), [("slotctl", CliExit), ("slotd", DaemonExit)])
def test_the_readme_lists_every_exit_status_and_no_other(program, table):
    """The README's exit-status table of each program lists exactly the statuses errors.py defines, in order."""
    assert documented_statuses(program) == sorted(status.value for status in table)


@pytest.mark.parametrize("unit", ["systemd/slotd.service", "systemd/system/slotd.service"])
def test_the_units_do_not_restart_on_the_statuses_that_need_the_operator(unit):
    """Each unit's RestartPreventExitStatus names exactly the database and configuration statuses."""
    [line] = [
        line for line in (README.parent / unit).read_text().splitlines() if line.startswith("RestartPreventExitStatus=")
    ]
    assert sorted(int(word) for word in line.split("=", 1)[1].split()) == sorted(
        [DaemonExit.DATABASE, DaemonExit.CONFIG]
    )
