"""A minimal inotify watch (through ctypes), so idle spools cost no polling at all."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class DirectoryWatch:
    """A readable file descriptor whenever a file in the directory is created or written."""

    def __init__(self, directory: Path) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            error = ctypes.get_errno()
            raise OSError(error, f"inotify_init1: {os.strerror(error)}")
        self.fd = fd
        mask = IN_MODIFY | IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_TO
        if _libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
            error = ctypes.get_errno()
            os.close(fd)
            raise OSError(error, f"inotify_add_watch {directory}: {os.strerror(error)}")

    def drain(self) -> None:
        """Forget the events seen so far; the caller is about to look at the files."""
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)
