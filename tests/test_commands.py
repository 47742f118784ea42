"""A command is whole: request class, handler, slotctl subcommand; and sessions go out as the view."""

from __future__ import annotations

import argparse
import typing

import pytest

from supervisor import cli, commands, protocol
from supervisor.model import LIVE_FIELDS, SESSION_FIELDS
from tests.helpers import py


def test_every_request_class_is_a_known_command() -> None:
    """Each request class protocol.py declares for a command is registered under that command, so parse_request accepts it."""
    declared = [
        value
        for value in vars(protocol).values()
        if isinstance(value, type) and issubclass(value, protocol.Request) and "command" in vars(value)
    ]
    assert {request.command: request for request in declared} == protocol.REQUESTS


def test_every_command_has_one_handler_taking_its_request() -> None:
    """Each command in the schema has a registered handler whose request argument is that command's class, and no handler is registered for anything else."""
    assert set(commands.HANDLERS) == set(protocol.REQUESTS.values())
    for request_type, handler in commands.HANDLERS.items():
        assert typing.get_type_hints(handler)["request"] is request_type, handler.__name__


def test_every_handler_method_is_registered_under_its_command() -> None:
    """Each cmd_<name> method of Commands is the registered handler of the command <name>: none is left out of the registry."""
    methods = {name.removeprefix("cmd_") for name in dir(commands.Commands) if name.startswith("cmd_")}
    assert methods == set(protocol.COMMANDS)
    for name, request_type in protocol.REQUESTS.items():
        assert commands.HANDLERS[request_type] is getattr(commands.Commands, f"cmd_{name}")


def test_every_command_is_a_slotctl_subcommand_but_the_listed_exceptions() -> None:
    """slotctl has a subcommand for each protocol command, except those it lists as having none, and no subcommand but its own listed ones beyond them."""
    parser = cli.build_parser()
    subcommands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices
    assert set(subcommands) - cli.SUBCOMMANDS_OF_ITS_OWN == set(protocol.COMMANDS) - cli.COMMANDS_WITHOUT_SUBCOMMAND
    assert cli.COMMANDS_WITHOUT_SUBCOMMAND <= set(protocol.COMMANDS)
    assert not cli.SUBCOMMANDS_OF_ITS_OWN & set(protocol.COMMANDS)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"cmd": "show", "session": "ab"}, protocol.ShowRequest(session="ab")),
        (
            {"cmd": "follow", "session": "ab", "stream": None},
            protocol.FollowRequest(session="ab", since_seq=0, stream=None),
        ),
        (
            {"cmd": "start", "argv": ["true"], "cwd": "/"},
            protocol.StartRequest(
                argv=["true"],
                cwd="/",
                env={},
                labels={},
                priority=0,
                nice=None,
                queue=True,
                tty=False,
                tty_cols=None,
                tty_rows=None,
                timeout=None,
                memory_limit=None,
                inherit_env=True,
                wait_started=False,
            ),
        ),
        ({"cmd": "info"}, protocol.InfoRequest()),
    ],
)
def test_a_request_becomes_its_commands_class_with_every_default_filled(
    message: dict, expected: protocol.Request
) -> None:
    """parse_request returns the command's request class, with the defaults of the arguments left out or null."""
    assert protocol.parse_request({"id": 7, **message}) == (7, expected)


def test_session_objects_carry_exactly_the_fields_of_the_view(daemon) -> None:
    """start, follow, show, ps and stop send sessions with the view's fields (and their own extras), never the spool position."""
    started = daemon.start_session(py("print('hi')"))
    assert list(started) == list(SESSION_FIELDS)
    with daemon.client() as client:
        followed = next(message for message in client.messages("follow", session=started["id"]) if "ok" in message)[
            "result"
        ]
    assert list(followed) == [*SESSION_FIELDS, "last_seq"]
    assert list(daemon.session(started["id"])) == [*SESSION_FIELDS, *LIVE_FIELDS, "transcript"]
    sleeper = daemon.start_session(py("import time; time.sleep(60)"))
    assert list(daemon.request("stop", session=sleeper["id"])) == [*SESSION_FIELDS, *LIVE_FIELDS]
    assert [list(session) for session in daemon.request("ps")] == [[*SESSION_FIELDS, *LIVE_FIELDS]] * 2
