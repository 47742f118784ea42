"""Starting a session's shim: its private directory under sessions/ (the spec it runs by,
its input FIFO, its first spool segment, its log), then the shim process itself.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from supervisor import diskspace, fsguard, spool
from supervisor.config import Config
from supervisor.store import Session

# The shim's stdout and stderr, in its session directory: its own words if it refuses.
SHIM_LOG = "shim.log"
# Disk space held for the shim's first spool record (START or SPAWN_FAILED, a few
# hundred bytes): one page, the least a filesystem allocates.
FIRST_RECORD_ROOM = 4096
# A tty session's TERM unless its env names one: what terminals and tmux emulate today.
TTY_TERM = "xterm-256color"
# A window size in the environment, which programs (ncurses among them) believe before
# the terminal's and never update when the window changes: one the daemon inherited from
# whoever started it says nothing of a tty session's terminal, so its command has none
# (unless the session's env gives one).
WINDOW_SIZE_VARIABLES = ("COLUMNS", "LINES")


def shim_spec(config: Config, session: Session, slot: int) -> dict[str, Any]:
    """What the shim reads: the command, and the settings it runs by."""
    env = dict(session.env)
    env["SLOTD_SESSION_ID"] = session.id
    env["SLOTD_SLOT"] = str(slot)
    if session.tty:
        # Programs on a terminal look it up by TERM; the daemon's own (none under
        # systemd) says nothing of this one. The session's env may name another.
        env.setdefault("TERM", TTY_TERM)
    return {
        "argv": session.argv,
        "cwd": session.cwd,
        "env": env,
        "env_unset": [name for name in WINDOW_SIZE_VARIABLES if name not in env] if session.tty else [],
        "flush_interval": config.flush_interval,
        "max_chunk_bytes": config.max_chunk_bytes,
        "segment_bytes": config.spool_segment_bytes,
        # config.py keeps segments at most half of spool_max_bytes: two fit.
        "max_segments": config.spool_max_bytes // config.spool_segment_bytes,
        "stop_timeout": config.stop_timeout,
        "tty": {"cols": session.tty_cols, "rows": session.tty_rows} if session.tty else None,
        # Sessions recorded before slotd set a nice value have none: the default then.
        "nice": config.session_nice if session.nice is None else session.nice,
    }


def spawn_shim(sessions_fd: int, spool_dir: Path, spec: dict[str, Any], umask: int) -> subprocess.Popen[bytes]:
    """Make the session's directory (named as spool_dir, under the held sessions/
    descriptor) and start its shim in a session of its own.

    Raises OSError (ENOSPC when the runtime disk is full) or fsguard.PathError.
    """
    shim_log = make_session_dir(sessions_fd, spool_dir.name, spec)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "supervisor.shim", str(spool_dir)],
            stdin=subprocess.DEVNULL,
            stdout=shim_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd="/",
            umask=umask,
        )
    finally:
        os.close(shim_log)


def make_session_dir(sessions_fd: int, name: str, spec: dict) -> int:
    """Create a session's directory, its spec, its input FIFO and its first spool
    segment, all new and private, relative to the held sessions/ descriptor; return the
    shim log's descriptor.

    Nothing here follows a name: whatever an earlier run left under this name is
    removed first (a link as a link), the directory is opened without following one,
    and every file in it is created with O_EXCL.
    """
    remove_session_dir(sessions_fd, name)
    os.mkdir(name, 0o700, dir_fd=sessions_fd)
    dir_fd = fsguard.open_dir(name, dir_fd=sessions_fd)
    try:
        with open(fsguard.create_file(spool.SPEC_FILE, dir_fd), "w") as spec_file:
            spec_file.write(json.dumps(spec))
        os.mkfifo(spool.STDIN_FIFO, 0o600, dir_fd=dir_fd)
        segment = fsguard.create_file(spool.segment_name(0), dir_fd)
        try:
            # The shim records that it started the command (or why it could not) before
            # anything else. That record must find room: a full disk is a clear refusal
            # here, before the command runs, not a command running unrecorded while its
            # shim waits for room to say so.
            diskspace.reserve(segment, FIRST_RECORD_ROOM)
        finally:
            os.close(segment)
        return fsguard.create_file(SHIM_LOG, dir_fd)
    finally:
        os.close(dir_fd)


def remove_session_dir(sessions_fd: int, name: str) -> None:
    """Remove whatever is under a session's name (a link as a link), if anything."""
    try:
        is_dir = stat.S_ISDIR(os.lstat(name, dir_fd=sessions_fd).st_mode)
    except FileNotFoundError:
        return
    if is_dir:
        shutil.rmtree(name, dir_fd=sessions_fd)
    else:
        os.unlink(name, dir_fd=sessions_fd)


def last_words(path: Path) -> str | None:
    """The last line a shim wrote to its log, if any (why it refused to run)."""
    try:
        with open(path, "rb") as log_file:
            log_file.seek(max(0, os.fstat(log_file.fileno()).st_size - 1024))
            lines = log_file.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return None
    return lines[-1] if lines else None
