"""docs/protocol.md stays true to the code: every command, argument, error code and session field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from supervisor import model, protocol

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

# A table row whose first cell is a code span: | `name` | ... |
TABLE_NAME = re.compile(r"^\|\s*`([^`]+)`\s*\|", re.MULTILINE)


def level2_section(text: str, title: str) -> str:
    """The text under the '## title' heading, up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match is not None, f"docs/protocol.md has no '## {title}' section"
    return match.group(1)


def command_sections() -> dict[str, str]:
    """Each '### `name`' section under '## Commands', by command name."""
    commands = level2_section(DOC.read_text(encoding="utf-8"), "Commands")
    parts = re.split(r"^### `([^`]+)`\s*$", commands, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def argument_names(section: str) -> set[str]:
    """The names in the first column of a section's 'Argument' table."""
    table = re.search(r"^\| Argument \|.*?(?=^[^|]|\Z)", section, re.MULTILINE | re.DOTALL)
    return set(TABLE_NAME.findall(table.group(0))) if table else set()


def test_every_command_has_its_own_section() -> None:
    """Each command the daemon accepts has a section, and no section describes a command that does not exist."""
    assert set(command_sections()) == set(protocol.COMMANDS)


@pytest.mark.parametrize("command", sorted(protocol.COMMANDS))
def test_every_argument_is_described_in_its_command_section(command: str) -> None:
    """Each argument a command accepts is named in that command's section and in its argument table."""
    section = command_sections().get(command, "")
    arguments = set(protocol.COMMANDS[command])
    assert not [name for name in arguments if f"`{name}`" not in section]
    assert argument_names(section) == arguments


@pytest.mark.parametrize("command", sorted(protocol.COMMANDS))
def test_required_arguments_are_marked_required(command: str) -> None:
    """An argument's row says 'required' exactly when the protocol requires it."""
    section = command_sections().get(command, "")
    for name, arg in protocol.COMMANDS[command].items():
        row = re.search(rf"^\|\s*`{re.escape(name)}`\s*\|[^|]*\|([^|]*)\|", section, re.MULTILINE)
        assert row is not None, f"{command}: no table row for {name!r}"
        assert (row.group(1).strip() == "required") == arg.required, f"{command}: {name!r}"


def test_error_code_table_lists_exactly_the_codes_that_exist() -> None:
    """The error-code table has a row for every code in ErrorCode and none for a code that does not exist."""
    section = level2_section(DOC.read_text(encoding="utf-8"), "Error codes")
    listed = TABLE_NAME.findall(section)
    assert len(listed) == len(set(listed)), "a code is listed twice"
    assert set(listed) == set(protocol.ALL_ERROR_CODES)


def session_object_fields() -> list[str]:
    """The names in the first column of the table under '## The session object'."""
    section = level2_section(DOC.read_text(encoding="utf-8"), "The session object")
    table = re.search(r"^\| Field \|.*?(?=^[^|]|\Z)", section, re.MULTILINE | re.DOTALL)
    assert table is not None, "'## The session object' has no field table"
    return TABLE_NAME.findall(table.group(0))


def test_session_object_table_lists_exactly_the_fields_of_the_view() -> None:
    """The session-object table has a row for every field of the session on the wire and none for a field it does not have."""
    listed = session_object_fields()
    assert len(listed) == len(set(listed)), "a field is listed twice"
    assert set(listed) == {*model.SESSION_FIELDS, *model.LIVE_FIELDS}


def test_the_full_session_object_example_has_exactly_the_fields_of_the_view() -> None:
    """The example of a full session object (as show returns it) has every field of the view and no other."""
    section = level2_section(DOC.read_text(encoding="utf-8"), "The session object")
    example = re.search(
        r"^A full session object as `show` returns it:\s*```json\n(.*?)```", section, re.MULTILINE | re.DOTALL
    )
    assert example is not None, "'## The session object' has no full example"
    assert list(json.loads(example.group(1))) == [*model.SESSION_FIELDS, *model.LIVE_FIELDS, "transcript"]
