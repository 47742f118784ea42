"""The control socket's file: whether its path is free (or another daemon answers
there), binding it with the right mode, and removing only the socket this daemon bound.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

import trio

from supervisor import jsonlimits
from supervisor.errors import SocketInUse, SocketPathError
from supervisor.linux import peer_credentials

# What the probe reads at a time.
RECEIVE_SIZE = 65536
# How long a daemon found on the socket path at start has to answer info.
PROBE_TIMEOUT = 2.0
# An info reply is a few hundred bytes; more than this from a listener is not slotd's.
PROBE_REPLY_LIMIT = 65536


@dataclass(frozen=True)
class SocketFile:
    """The socket file this daemon bound, known by its inode."""

    path: Path
    device: int
    inode: int

    def remove(self) -> None:
        """Unlink the socket file, if it is still the one this daemon bound."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == (self.device, self.inode):
            self.path.unlink(missing_ok=True)


async def listener_pid(path: Path) -> int | None:
    """The pid of whoever listens on path, or None if nobody does (a stale socket).

    Asked with an info request, as any client would; a listener that does not answer
    in time is named by the kernel's record of who bound it (SO_PEERCRED).
    """
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            await probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        except OSError as error:  # a full backlog, say: someone listens, and is stuck
            raise SocketInUse(
                f"something listens on socket {path} but does not take connections ({error.strerror}); refusing to take it over"
            ) from None
        pid = peer_credentials(probe)[0]
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                await probe.send(b'{"id": 1, "cmd": "info"}\n')
                reply = b""
                # Whoever listens there may be hostile: a bounded read, a depth-checked parse.
                while (
                    not reply.endswith(b"\n")
                    and len(reply) < PROBE_REPLY_LIMIT
                    and (data := await probe.recv(RECEIVE_SIZE))
                ):
                    reply += data
                answered = jsonlimits.loads(reply[:PROBE_REPLY_LIMIT])["result"]["pid"]
            except (OSError, ValueError, KeyError, TypeError):
                answered = None  # it hung up or said something else: SO_PEERCRED names it
            if isinstance(answered, int) and not isinstance(answered, bool):
                pid = answered
        return pid
    finally:
        probe.close()


async def check_socket_free(path: Path) -> os.stat_result | None:
    """Refuse a socket path that is too long, holds something other than a socket, or
    has a daemon answering on it; return a stale socket's stat (nobody listens: it may
    be replaced), or None when there is nothing at path."""
    if len(os.fsencode(path)) >= 108:
        raise SocketPathError(
            f"socket path is too long for a Unix socket ({len(os.fsencode(path))} bytes, at most 107): {path}"
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError(f"{path} exists and is not a socket; refusing to replace it")
    pid = await listener_pid(path)
    if pid is not None:
        raise SocketInUse(
            f"another slotd (pid {pid}) answers on socket {path}; refusing to take it over "
            "(give each state_dir its own socket)"
        )
    return st


async def bind_socket(path: Path, group_id: int | None) -> tuple[trio.socket.SocketType, SocketFile]:
    """Bind the control socket, replacing a stale one; mode 0600, or 0660 for a group.

    The directories on the way are checked before (daemon.prepare_directories). The
    mode comes from the umask at bind time, so the file is never open to others for a
    moment, and nothing is done to the path after by a call that would follow a link.
    """
    stale = await check_socket_free(path)
    if stale is not None:
        SocketFile(path, stale.st_dev, stale.st_ino).remove()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117 if group_id is not None else 0o177)
    try:
        await sock.bind(os.fspath(path))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:  # bound by someone else since the check
            raise SocketInUse(f"another process bound socket {path} while slotd was starting") from None
        raise
    finally:
        os.umask(old_umask)
    st = os.lstat(path)
    bound = SocketFile(path, st.st_dev, st.st_ino)
    if group_id is not None:
        os.chown(path, -1, group_id, follow_symlinks=False)
    sock.listen(128)
    return sock, bound
