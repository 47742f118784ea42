"""Trusting paths: owner and mode checks before slotd uses a directory or a file.

Whoever can write to a directory can swap what is in it, so slotd uses a directory only
if slotd's own user owns it and nobody else can write to it, and only if every
directory above it belongs to root or to slotd's user and is not writable by others
either (a sticky one such as /tmp excepted: there nobody can rename or remove what
another user made). This is what systemd does with its RuntimeDirectory, sshd with
StrictModes and containerd with its roots.

Standard library only: the shim checks its session directory with it too.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from pathlib import Path

from supervisor.errors import PathError, UntrustedPath

# How many symbolic links a path may pass through, as the kernel allows (MAXSYMLINKS).
MAX_SYMLINKS = 40
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def describe(st: os.stat_result) -> str:
    """Who owns it and its mode, the way a message names them: 'owner nobody, mode 0777'."""
    return f"owner {owner_name(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o}"


def others_may_write(st: os.stat_result) -> bool:
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def check_owned(path: Path | str, st: os.stat_result, what: str = "") -> None:
    """Refuse what is not owned by this process's user, or is writable by group or others."""
    if st.st_uid != os.geteuid() or others_may_write(st):
        name = f"{what} {path}" if what else str(path)
        raise UntrustedPath(
            f"{name} is not safe to use ({describe(st)}): it must belong to {owner_name(os.geteuid())} "
            "and not be writable by group or others"
        )


def check_private(path: Path | str, st: os.stat_result, what: str = "") -> None:
    """Refuse a secret that is not this process's user's, or that group or others may
    read or write: it must be mode 0600 or tighter."""
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        name = f"{what} {path}" if what else str(path)
        raise UntrustedPath(
            f"{name} is not safe to use ({describe(st)}): it must belong to {owner_name(os.geteuid())} "
            "with mode 0600 (nobody else may read or write it)"
        )


def _trusted_owners() -> str:
    return "root" if os.geteuid() == 0 else f"root or {owner_name(os.geteuid())}"


def _check_link(path: Path, st: os.stat_result) -> None:
    """Whoever owns a link decides where it leads: root or slotd's user only. (A link's
    own mode means nothing; its directory was checked before it.)"""
    if st.st_uid not in (0, os.geteuid()):
        raise UntrustedPath(
            f"{path} is not safe to use: it is a symbolic link of {owner_name(st.st_uid)}, not of {_trusted_owners()}"
        )


def _check_above(path: Path, st: os.stat_result) -> None:
    """A directory on the way to one of ours: root's or ours, and writable by nobody
    else unless it is sticky."""
    if st.st_uid not in (0, os.geteuid()) or (others_may_write(st) and not st.st_mode & stat.S_ISVTX):
        raise UntrustedPath(
            f"{path} is not safe to use ({describe(st)}): a directory above slotd's must belong to "
            f"{_trusted_owners()} and not be writable by group or others (unless sticky, as /tmp is)"
        )


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise PathError(f"cannot look at {path}: {error.strerror}") from None


def walk(path: Path) -> tuple[Path, list[str]]:
    """Check every directory from / down to path's parent, following (and checking) each
    symbolic link on the way; return the real path reached and the names still missing.

    A directory that exists is checked as one above slotd's (see _check_above); the
    last component, if it exists, is left to the caller, which knows what it must be.
    """
    # Not os.path.abspath: it would drop "link/.." without looking at the link, while
    # the kernel follows the link first. Each ".." here goes up from where the walk
    # really is, as the kernel's does.
    path = Path(os.getcwd(), path)
    real = Path("/")
    todo = list(path.parts[1:])
    hops = 0
    while todo:
        name = todo.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            real = real.parent
            continue
        candidate = real / name
        st = _lstat(candidate)
        if st is None:
            return candidate, todo
        if stat.S_ISLNK(st.st_mode):
            _check_link(candidate, st)
            hops += 1
            if hops > MAX_SYMLINKS:
                raise PathError(f"{path}: too many levels of symbolic links")
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                real = Path("/")
            # A link that leads nowhere is a mistake to report, not a path to create.
            if not os.path.exists(candidate):
                raise PathError(f"{candidate} is a symbolic link to {target}, which does not exist")
            todo = [*target.parts[1 if target.is_absolute() else 0 :], *todo]
            continue
        if not todo:
            return candidate, []
        if not stat.S_ISDIR(st.st_mode):
            raise PathError(f"{candidate} is not a directory")
        _check_above(candidate, st)
        real = candidate
    return real, []


def check_parent(path: Path) -> Path:
    """Check a directory slotd only creates into (its socket's, say) and every one above
    it: root's or ours, writable by nobody else unless sticky; return its real path."""
    real, missing = walk(path)
    st = _lstat(real)
    if missing or st is None:
        raise PathError(f"{path} does not exist")
    if not stat.S_ISDIR(st.st_mode):
        raise PathError(f"{real} is not a directory")
    _check_above(real, st)
    return real


def ensure_dir(path: Path, mode: int, gid: int = -1) -> Path:
    """Make sure path is a directory of ours with exactly this mode (and group); return
    its real path.

    Missing directories are created with this mode and group, each inside the one made
    before it, through a directory file descriptor: a name swapped meanwhile is never
    followed. An existing directory must already be ours and not writable by others
    (UntrustedPath otherwise: someone else may have put things in it); then its mode and
    group are set, as systemd sets a StateDirectoryMode.
    """
    real, missing = walk(path)
    if missing or not os.path.lexists(real):
        parent, names = real.parent, [real.name, *missing]
        name = ""
        try:
            fd = os.open(parent, _DIRECTORY_FLAGS)
        except OSError as error:
            raise PathError(f"cannot create {real}: {parent}: {error.strerror}") from None
        try:
            for name in names:
                try:
                    os.mkdir(name, mode, dir_fd=fd)
                except FileExistsError:
                    pass  # made meanwhile (by ourselves, or not: opened and checked below)
                child = os.open(name, _DIRECTORY_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
                parent = parent / name
                check_owned(parent, os.fstat(fd), "directory")
                _set_mode(fd, mode, gid)
        except OSError as error:
            raise PathError(f"cannot create {parent / name}: {error.strerror}") from None
        finally:
            os.close(fd)
        return parent
    try:
        fd = os.open(real, _DIRECTORY_FLAGS)
    except NotADirectoryError:
        raise PathError(f"{real} is not a directory") from None
    except OSError as error:
        raise PathError(f"cannot open {real}: {error.strerror}") from None
    try:
        check_owned(real, os.fstat(fd), "directory")
        _set_mode(fd, mode, gid)
    finally:
        os.close(fd)
    if not os.access(real, os.W_OK | os.X_OK):
        raise PathError(
            f"{real} is not writable ({'read-only file system' if _read_only(real) else 'permission denied'})"
        )
    return real


def _read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _set_mode(fd: int, mode: int, gid: int) -> None:
    st = os.fstat(fd)
    if gid != -1 and st.st_gid != gid:
        os.fchown(fd, -1, gid)
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


def _open_no_link(path: Path | str, flags: int, dir_fd: int | None, what: str) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UntrustedPath(f"{what} {path} is a symbolic link") from None
        raise


def open_dir(path: Path | str, dir_fd: int | None = None) -> int:
    """Open a directory of ours without following a link; UntrustedPath if it is not ours."""
    fd = _open_no_link(path, _DIRECTORY_FLAGS, dir_fd, "directory")
    try:
        check_owned(path, os.fstat(fd), "directory")
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_owned(name: str, flags: int, dir_fd: int, kind: int, what: str) -> int:
    """Open an existing file in a held directory, refusing a link, a file of another type
    (kind is stat.S_IFREG, S_IFIFO...), or one that is not ours."""
    fd = _open_no_link(name, flags, dir_fd, what)
    try:
        st = os.fstat(fd)
        if stat.S_IFMT(st.st_mode) != kind:
            raise UntrustedPath(f"{what} {name} is not a {_KIND_NAMES.get(kind, 'file of the expected type')}")
        check_owned(name, st, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


_KIND_NAMES = {stat.S_IFREG: "regular file", stat.S_IFIFO: "FIFO", stat.S_IFDIR: "directory"}


def create_file(name: str, dir_fd: int, mode: int = 0o600) -> int:
    """Create a new file in a held directory for writing; never an existing name or a link."""
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)


def searchable_by_group(st: os.stat_result, gid: int) -> bool:
    """Members of gid may pass through this directory (search permission)."""
    return bool(st.st_mode & stat.S_IXOTH or (st.st_mode & stat.S_IXGRP and st.st_gid == gid))
