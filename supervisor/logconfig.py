"""structlog, configured once: JSON lines off a terminal (journald keeps them), console on one."""

from __future__ import annotations

import logging
import sys

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
    root.handlers[:] = [_ToStructlog()]
    root.setLevel(LEVELS[level])


class _ToStructlog(logging.Handler):
    """Re-emit standard-library log records (SQLite's notices) as structlog events."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        # apsw logs every SQLite message as a warning; a NOTICE (e.g. WAL recovered
        # after a crash) is routine information.
        level = logging.INFO if "SQLITE_NOTICE" in message else record.levelno
        structlog.get_logger().log(level, "sqlite_log" if "SQLITE_" in message else "library_log", logger=record.name, message=message)
