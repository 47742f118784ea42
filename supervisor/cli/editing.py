"""slotctl edit and label: changing a session after it was started (pueue's edit, and
labels as the session's context that tools update as work goes on)."""

from __future__ import annotations

import argparse
from typing import Any

from supervisor.cli.commands import labels_from, parse_kv
from supervisor.cli.output import print_json, short_id
from supervisor.client import Client
from supervisor.errors import CliError, CliExit


def cmd_edit(client: Client, args: argparse.Namespace) -> int:
    """Change a queued session: only what is given changes; -e and -u change its
    environment, -l adds labels, a command after -- replaces its command."""
    changes: dict[str, Any] = {}
    if args.priority is not None:
        changes["priority"] = args.priority
    if args.cwd is not None:
        changes["cwd"] = args.cwd
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if argv:
        changes["argv"] = argv
    if args.env or args.unset or args.label or args.labels_json:
        session = client.request("show", session=args.id)
        if args.env or args.unset:
            env = {name: value for name, value in session["env"].items() if name not in args.unset}
            changes["env"] = env | parse_kv(args.env, "--env")
        if args.label or args.labels_json:
            changes["labels"] = session["labels"] | labels_from(args)
    if not changes:
        raise CliError("nothing to change: give -p, -C, -e, -u, -l or a new command after --", CliExit.USAGE)
    edited = client.request("edit", session=args.id, **changes)
    print_json(edited) if args.json else print(f"{short_id(edited['id'])} edited: {', '.join(sorted(changes))}")
    return CliExit.OK


def cmd_label(client: Client, args: argparse.Namespace) -> int:
    """Set labels (KEY=VALUE) and remove them (-d KEY) on any session, live or ended."""
    to_set = parse_kv(args.pairs, "a label")
    if not to_set and not args.delete:
        raise CliError("nothing to change: give KEY=VALUE pairs to set, or -d KEY to remove", CliExit.USAGE)
    session = client.request("label", session=args.id, set=to_set, delete=args.delete)
    if args.json:
        print_json(session)
    else:
        labels = " ".join(f"{name}={value}" for name, value in session["labels"].items()) or "(none)"
        print(f"{short_id(session['id'])} labels: {labels}")
    return CliExit.OK
