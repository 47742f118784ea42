"""The dashboard's token, kept in a file so that it outlives the dashboard: a page opened
before a restart (the cookie its browser holds) goes on working after it, until
`slotctl dashboard --new-token` replaces it.

The file is dashboard.token beside the daemon's socket, in the daemon's runtime
directory (unless the socket was configured elsewhere). Whoever reads it can run
commands as this user, so it is used only when it is a regular file of this user's that
nobody else may read or write (mode 0600), in a directory of this user's that nobody
else may write to (fsguard); anything else is refused, naming the file, never used.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from pathlib import Path

from supervisor import fsguard
from supervisor.errors import PathError, UntrustedPath

TOKEN_FILE = "dashboard.token"
# What secrets.token_urlsafe(32) makes: 32 random bytes, base64url without padding.
TOKEN_BYTES = 32
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")
# A runtime directory the dashboard makes, if the daemon has not yet: as the daemon would.
PRIVATE_DIR_MODE = 0o700
REPLACE_HINT = "remove it, or replace it with `slotctl dashboard --new-token`"


def token_file(socket: Path) -> Path:
    """Where the dashboard of the daemon on this socket keeps its token."""
    return socket.parent / TOKEN_FILE


def load_token(path: Path, renew: bool = False) -> str:
    """The token kept in path, written there first when there is none (or when renew:
    then the old one, and every cookie made from it, stops working).

    Raises UntrustedPath when the file or its directory is not safe to use, PathError
    when the file holds no token or cannot be written."""
    directory = path.parent
    real, missing = fsguard.walk(directory)
    if missing or not os.path.lexists(real):
        real = fsguard.ensure_dir(directory, PRIVATE_DIR_MODE)  # the daemon has not run yet
    dir_fd = fsguard.open_dir(real)
    try:
        if not renew:
            token = read_token(dir_fd, real / path.name)
            if token is not None:
                return token
        return write_token(dir_fd, real / path.name, replace=renew)
    finally:
        os.close(dir_fd)


def read_token(dir_fd: int, path: Path) -> str | None:
    """The token in the file, or None if there is no file."""
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UntrustedPath(f"the dashboard's token file {path} is a symbolic link; {REPLACE_HINT}") from None
        raise PathError(f"cannot read the dashboard's token file {path}: {error.strerror}") from None
    with open(fd, "rb") as file:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedPath(f"the dashboard's token file {path} is not a regular file; {REPLACE_HINT}")
        try:
            fsguard.check_private(path, st, "the dashboard's token file")
        except UntrustedPath as error:
            raise UntrustedPath(f"{error}; {REPLACE_HINT}") from None
        text = file.read(256).decode("ascii", errors="replace").strip()
    if not TOKEN_SHAPE.fullmatch(text):
        raise PathError(f"the dashboard's token file {path} holds no token; {REPLACE_HINT}")
    return text


def write_token(dir_fd: int, path: Path, replace: bool) -> str:
    """A new token, written whole to a new 0600 file that then takes path's name: a
    dashboard starting meanwhile reads the old token or the new one, never half of one.
    Without replace, a token another dashboard wrote first is the one used."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    staging = f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        with open(fsguard.create_file(staging, dir_fd, 0o600), "w") as file:
            file.write(token + "\n")
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.rename(staging, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return token
        try:
            os.link(staging, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            written_first = read_token(dir_fd, path)
            if written_first is None:  # and removed since: ours it is
                return write_token(dir_fd, path, replace)
            return written_first
        return token
    except OSError as error:
        raise PathError(f"cannot write the dashboard's token file {path}: {error.strerror}") from None
    finally:
        try:
            os.unlink(staging, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
