"""structlog, configured once: JSON lines off a terminal (journald keeps them), console on one."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    console = sys.stderr.isatty() if fmt == "auto" else fmt == "console"
    renderer = structlog.dev.ConsoleRenderer(colors=False) if console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # SQLite's own log (apsw forwards it to the logging module) joins the same stream.
    root = logging.getLogger()
    root.handlers[:] = [_forwarder]
    root.setLevel(LEVELS[level])


@contextlib.contextmanager
def library_log_held() -> Iterator[None]:
    """Hold SQLite's log lines back while slotd starts, until release_library_log().
    If the start fails (a damaged database, say), the operator gets slotd's one line
    saying what is wrong and what to do, not SQLite's source line numbers before it:
    those go out at debug level. If it starts, they follow in order."""
    _forwarder.hold_back()
    try:
        yield
    except BaseException:
        _forwarder.let_through(logging.DEBUG)
        raise
    else:
        _forwarder.let_through()


def release_library_log() -> None:
    """slotd has started: what SQLite logged meanwhile goes out, and from now on at once."""
    _forwarder.let_through()


class _ToStructlog(logging.Handler):
    """Re-emit standard-library log records (SQLite's notices) as structlog events."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] | None = None
        # Not Handler.lock, which handle() holds around emit: this one guards held.
        self.held_lock = threading.Lock()

    def hold_back(self) -> None:
        with self.held_lock:  # SQLite logs from the writer and reader threads too
            self.held = []

    def let_through(self, level: int | None = None) -> None:
        with self.held_lock:
            held, self.held = self.held or [], None
            for record in held:
                self.forward(record, level)

    def emit(self, record: logging.LogRecord) -> None:
        with self.held_lock:
            if self.held is not None:
                self.held.append(record)
                return
        self.forward(record)

    def forward(self, record: logging.LogRecord, level: int | None = None) -> None:
        message = record.getMessage()
        if level is None:
            # apsw logs every SQLite message as a warning; a NOTICE (e.g. WAL recovered
            # after a crash) is routine information.
            level = logging.INFO if "SQLITE_NOTICE" in message else record.levelno
        structlog.get_logger().log(
            level, "sqlite_log" if "SQLITE_" in message else "library_log", logger=record.name, message=message
        )


_forwarder = _ToStructlog()
