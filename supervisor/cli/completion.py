"""Shell completion for slotctl, in bash, zsh and fish: its commands and options from
the parser, and session ids from the running daemon. argcomplete does the work (it runs
slotctl itself on each Tab with the line so far); `slotctl completion SHELL` prints the
shell's side of it."""

from __future__ import annotations

import argparse
import os
from typing import Any

from supervisor.cli.connection import connect
from supervisor.errors import CliExit, SlotdError

SHELLS = ("bash", "zsh", "fish")
# Positionals that name sessions.
SESSION_ARGUMENTS = frozenset({"id", "ids"})


def session_ids(prefix: str, parsed_args: argparse.Namespace, **_kwargs: Any) -> list[str]:
    """The short ids of the sessions `ps` lists (live, queued, the latest ended) that
    begin with what is typed; none if the daemon cannot be asked (a completion must
    never print an error into the command line)."""
    try:
        with connect(parsed_args) as client:
            ids = [
                message["session"]["id"][:8] for message in client.messages("ps", stream=True) if "session" in message
            ]
    except (SlotdError, OSError, ValueError, KeyError):
        return []
    return [session_id for session_id in ids if session_id.startswith(prefix)]


def complete_session_ids(parser: argparse.ArgumentParser) -> None:
    """Give every positional that names sessions, in every subcommand, the daemon's ids."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                complete_session_ids(subparser)
        elif action.dest in SESSION_ARGUMENTS and not action.option_strings:
            action.completer = session_ids  # type: ignore[attr-defined]


def complete(parser: argparse.ArgumentParser) -> None:
    """When a shell asks for completions (argcomplete's environment), answer and exit."""
    if "_ARGCOMPLETE" not in os.environ:
        return  # the usual case: argcomplete is not even imported (slotctl starts faster)
    import argcomplete

    complete_session_ids(parser)
    argcomplete.autocomplete(parser)


def cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete

    print(argcomplete.shellcode(["slotctl"], shell=args.shell))
    return CliExit.OK
