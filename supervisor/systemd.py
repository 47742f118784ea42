"""sd_notify without dependencies: one datagram to $NOTIFY_SOCKET.

READY=1 after reconcile, STATUS= with slots and queue, WATCHDOG=1 while the daemon
makes progress, STOPPING=1 on the way out. Outside systemd every call does nothing.
"""

from __future__ import annotations

import os
import socket


def _address(environ=os.environ) -> str | None:
    path = environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]  # an abstract socket
    return path


def notify(*fields: str) -> bool:
    """Send KEY=VALUE fields; True when a service manager is listening."""
    address = _address()
    if address is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto("\n".join(fields).encode(), address)
        except OSError:
            return False
    return True


def watchdog_interval(environ=os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the unit's WatchdogSec=), or None."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2
