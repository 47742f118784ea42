"""python -m supervisor.shim SESSION_DIR: check the session directory, then run its Shim."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

from supervisor import fsguard, spool
from supervisor.shim.loop import Shim


def open_session(path: Path) -> tuple[Path, int, dict[str, Any]]:
    """The session directory's real path, a descriptor held on it, and its spec, each
    checked: ours, writable by nobody else, reached through directories only root or
    we can change, and no link followed at the last step."""
    real, missing = fsguard.walk(path)
    if missing or not real.exists():
        raise fsguard.PathError(f"session directory {path} does not exist")
    dir_fd = fsguard.open_dir(real)
    try:
        spec_fd = fsguard.open_owned(spool.SPEC_FILE, os.O_RDONLY, dir_fd, stat.S_IFREG, "spec")
        with open(spec_fd, "rb") as spec_file:
            spec = json.loads(spec_file.read())
        if not isinstance(spec, dict):
            raise ValueError("not a JSON object")
    except BaseException:
        os.close(dir_fd)
        raise
    return real, dir_fd, spec


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m supervisor.shim SESSION_DIR")
    try:
        session_dir, dir_fd, spec = open_session(Path(sys.argv[1]))
    except (OSError, ValueError, fsguard.PathError) as error:
        # Nothing of this directory can be trusted, the spool included: say so and end.
        sys.exit(f"shim: refusing to run from {sys.argv[1]}: {error}")
    # Handlers, not SIG_IGN: an ignored signal would stay ignored in the command after
    # exec, and the command must get SIGINT and SIGHUP as usual.
    for signum in (signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: None)
    sys.exit(Shim(session_dir, spec, dir_fd).run())


if __name__ == "__main__":
    main()
