"""What goes wrong, in one place: the root of slotd's exceptions, their kinds, and the
exit statuses of slotd and slotctl (the README's tables are checked against these).

Standard library only: the shim and slotctl import it too.
"""

from __future__ import annotations

from enum import IntEnum


class DaemonExit(IntEnum):
    """How `slotd` exits; sysexits.h's numbers where one fits, so systemd's
    RestartPreventExitStatus can tell "needs the operator" from "try again"."""

    OK = 0  # stopped as asked
    FAILED = 1  # an unexpected error; the log has the traceback
    DATABASE = 65  # EX_DATAERR: the database needs the operator (damaged, missing, replaced)
    ALREADY_RUNNING = 75  # EX_TEMPFAIL: another daemon holds the directories or the socket
    CONFIG = 78  # EX_CONFIG: the configuration, a directory's owner or mode, a newer schema


class CliExit(IntEnum):
    """How `slotctl` exits (`run` and `wait` exit with the session's own status instead)."""

    OK = 0
    REFUSED = 1  # the daemon refused the request; the message names the error code
    USAGE = 2  # bad usage (argparse's own status)
    UNAVAILABLE = 3  # the daemon is not running or cannot be reached
    NO_CHECKPOINT = 4  # `wait --until checkpoint`: a session ended without reaching one
    TIMED_OUT = 124  # `wait --timeout`: the time ran out first (as timeout(1) exits)
    NOT_STARTED = 127  # `run`: the command could not be started, as a shell says


class SlotdError(Exception):
    """The root of every error slotd raises on purpose; the message says what is wrong."""


class ConfigError(SlotdError):
    """The configuration cannot be used; the message says where and why."""


class PathError(SlotdError):
    """A path slotd cannot use; the message names it and says why."""


class UntrustedPath(PathError):
    """A path that another user could change under slotd (its owner or mode is wrong)."""


class StartupError(SlotdError):
    """The daemon cannot start; the message says why and what to do."""

    def __init__(self, message: str, exit_code: int = DaemonExit.ALREADY_RUNNING) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SocketPathError(SlotdError):
    """The socket cannot be bound where the configuration says."""


class SocketInUse(SlotdError):
    """Another daemon answers on the socket path: its socket is never taken over."""


class SchemaTooNew(SlotdError):
    """The database was written by a newer slotd: this one must not touch it."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"database schema version {found} is newer than this slotd knows ({known})")
        self.found = found
        self.known = known


class DamagedRow(SlotdError, ValueError):
    """A session row slotd cannot use (edited behind its back, or written by a slotd
    that accepted more than this one does)."""

    def __init__(self, session_id: str, column: str, problem: str) -> None:
        super().__init__(f"session {session_id}: column {column} {problem}")
        self.session_id = session_id


class CorruptSpool(SlotdError):
    """A spool record whose checksum or length cannot be right."""


class AmbiguousPrefix(SlotdError):
    """A session id prefix that matches more than one session."""

    def __init__(self, prefix: str, matches: list[str]) -> None:
        more = "+" if len(matches) >= 10 else ""
        super().__init__(f"id prefix {prefix!r} matches {len(matches)}{more} sessions")
        self.matches = matches


class InputClosed(SlotdError):
    """Nobody reads a session's input FIFO any more: the shim is gone or going."""


class CliError(SlotdError):
    """slotctl cannot go on: the message is printed after "slotctl: ", status is its exit."""

    def __init__(self, message: str, status: int = CliExit.REFUSED) -> None:
        super().__init__(message)
        self.status = status


# -- what the slot manager refuses (commands.py answers each with its ErrorCode) --------


class InvalidArgument(SlotdError):
    """A request's argument that cannot be used; the message names it."""


class InvalidState(SlotdError):
    """An action the session's state does not allow; the message says what it is."""


class SessionNotLive(InvalidState):
    """An action on a live session asked of one that is not (queued, or ended)."""

    def __init__(self, action: str, session_id: str, status: str) -> None:
        super().__init__(f"cannot {action} session {session_id}: it is {status}")
        self.session_id = session_id


class SlotsFull(SlotdError):
    """A start that may not queue found no free slot (or the daemon draining)."""


class StorageFull(SlotdError):
    """The runtime directory's disk has no room for a session's files: it is failed."""
