"""The SQLite store, through APSW: schema, migrations and every SQL statement.

One writer connection (``BEGIN IMMEDIATE``, WAL, no automatic checkpoints on the
capture path) and any number of reader connections. Nothing here is async: the daemon
calls these methods from worker threads so a commit never stalls the event loop.

- records: Session, Row and Batch (the vocabulary and times are supervisor.model's)
- schema: connection settings, the schema and its migrations
- files: the database's files (identity, a lost WAL set aside) and checkpoints
- reader: Reader, every query
- writes: Store, the writer connection and every change
- trimming: retention's SQL
"""

from supervisor.errors import AmbiguousPrefix, DamagedRow, SchemaTooNew
from supervisor.store.files import (
    DATABASE_SUFFIXES,
    TRUNCATE_BUSY_TIMEOUT_MS,
    Checkpointer,
    DatabaseFile,
    database_is_empty,
    leave_journal_on_close,
)
from supervisor.store.reader import EndedCursor, Reader
from supervisor.store.records import ROW_OVERHEAD, Batch, Row, Session, row_cost
from supervisor.store.schema import BUSY_TIMEOUT_MS, MIGRATIONS, SCHEMA_VERSION, WAL_SIZE_LIMIT, connect, migrate
from supervisor.store.writes import Store

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DATABASE_SUFFIXES",
    "MIGRATIONS",
    "ROW_OVERHEAD",
    "SCHEMA_VERSION",
    "TRUNCATE_BUSY_TIMEOUT_MS",
    "WAL_SIZE_LIMIT",
    "AmbiguousPrefix",
    "Batch",
    "Checkpointer",
    "DamagedRow",
    "DatabaseFile",
    "EndedCursor",
    "Reader",
    "Row",
    "SchemaTooNew",
    "Session",
    "Store",
    "connect",
    "database_is_empty",
    "leave_journal_on_close",
    "migrate",
    "row_cost",
]
