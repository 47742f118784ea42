"""Disk space taken ahead of need, so a write that must not wait for room cannot; and
how much is left.

Linux's fallocate(2) through ctypes (Python has only posix_fallocate, which grows the
file: an appending writer would then write after the reserved zeros).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

from supervisor import spool

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
FALLOC_FL_KEEP_SIZE = 0x01


def reserve(fd: int, length: int) -> None:
    """Allocate the file's first length bytes without changing its size.

    Raises OSError (ENOSPC when the disk is full). A filesystem that cannot reserve
    (EOPNOTSUPP) is let be: there the first write may wait for room as any other does.
    """
    if _libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, length) == 0:
        return
    error = ctypes.get_errno()
    if error in (errno.EOPNOTSUPP, errno.ENOSYS):
        return
    raise OSError(error, os.strerror(error))


def is_no_space(error: OSError) -> bool:
    """The disk (or the user's quota) is full: the operator's to fix, not a bug."""
    return error.errno in spool.NO_SPACE_ERRNOS


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on path's filesystem (None if unknown)."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize
