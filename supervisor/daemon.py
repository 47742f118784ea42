"""slotd: the nursery tree, signals and the shutdown policy.

Start-up order is explicit: check (or create) the directories, lock the state
directory, check that no other daemon answers on the socket, open the database, start
the ingestor and the slot manager, reconcile what the last run left, bind the socket,
then tell systemd READY. Shutdown runs it backwards; the ingestor goes last so
everything read from a spool is committed.

A refusal to start is one line on stderr and a distinct exit status: 78 (EX_CONFIG)
for what the operator must change (the configuration, a directory's owner or mode, a
database from a newer slotd), which the systemd units keep from becoming a restart
loop; 75 (EX_TEMPFAIL) when another daemon holds the state directory or the socket;
65 (EX_DATAERR) when the database needs the operator: damaged, or missing or empty
while spools or the lock file show that sessions were recorded in it, or deleted or
replaced under the running daemon (which then stops, leaving sessions running). The
units keep 65 from restarting in a loop too; the README says how to recover.
"""

from __future__ import annotations

import argparse
import fcntl
import grp
import os
import signal
import stat
import sys
from contextlib import contextmanager
from pathlib import Path

import apsw
import structlog
import trio

from supervisor import __version__, control, fsguard, maintenance, recovery, socketfile, systemd
from supervisor.commands import Commands
from supervisor.config import Config, ConfigError, load_config, replace
from supervisor.database import BackgroundThread, DatabaseWriter, ReaderPool
from supervisor.errors import DaemonExit, SocketInUse, SocketPathError, StartupError
from supervisor.ingest import Ingestor
from supervisor.logconfig import configure_logging, library_log_held, release_library_log
from supervisor.slots import SlotManager
from supervisor.store import (
    DATABASE_SUFFIXES,
    Checkpointer,
    SchemaTooNew,
    Store,
    database_is_empty,
    leave_journal_on_close,
)

log = structlog.get_logger()

# Files slotd creates are its own alone (the database holds every session's environment
# and output); sessions get the umask slotd was started with.
DAEMON_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
# A directory on the way to a socket_group socket: its group may pass, not list.
GROUP_PASS_MODE = 0o710
DATABASE_FILE_MODE = 0o600
LOCK_FILE = "slotd.lock"
LOCK_FILE_MODE = 0o600
LOCK_FILE_MAX = 4096  # what a lock file holds: a pid and a path


def socket_group_id(config: Config) -> int | None:
    if not config.socket_group:
        return None
    try:
        return grp.getgrnam(config.socket_group).gr_gid
    except KeyError:
        raise StartupError(
            f"socket_group {config.socket_group!r} is not a group on this system", DaemonExit.CONFIG
        ) from None


def prepare_directories(config: Config) -> Config:
    """Create the state and runtime directories and sessions/, or check the ones there.

    Each must be slotd's user's and writable by nobody else, and so must every directory
    above them (fsguard): a directory another user can write to lets them swap a
    session's spec or the socket. With socket_group, the directories slotd owns on the
    socket's way get that group and mode 0710, and every other one on the way must let
    the group pass, or slotd refuses to start, naming it.

    Returns the configuration with the real paths that were checked, so that what is
    used is what was checked: the configured ones may pass through links.
    """
    gid = socket_group_id(config)
    socket_dir = config.socket.parent

    def on_socket_path(directory: Path) -> bool:
        return gid is not None and (socket_dir == directory or directory in socket_dir.parents)

    real = {}
    for key in ("state_dir", "runtime_dir"):
        directory = getattr(config, key)
        if gid is not None and on_socket_path(directory):
            real[key] = fsguard.ensure_dir(directory, GROUP_PASS_MODE, gid)
        else:
            real[key] = fsguard.ensure_dir(directory, PRIVATE_DIR_MODE)
    fsguard.ensure_dir(real["runtime_dir"] / config.sessions_dir.name, PRIVATE_DIR_MODE)
    if os.path.isdir(socket_dir):
        # Ours, or one slotd only creates its socket in (/run, or a sticky /tmp).
        real_socket_dir = fsguard.check_parent(socket_dir)
    elif gid is None:
        real_socket_dir = fsguard.ensure_dir(socket_dir, PRIVATE_DIR_MODE)
    else:
        real_socket_dir = fsguard.ensure_dir(socket_dir, GROUP_PASS_MODE, gid)
    if gid is not None and config.socket_group:
        check_group_can_pass(real_socket_dir, config.socket_group, gid)
    return replace(config, socket=real_socket_dir / config.socket.name, **real)


def check_group_can_pass(directory: Path, group: str, gid: int) -> None:
    """Every directory from / to the socket's must let socket_group's members through."""
    for step in [*reversed(directory.parents), directory]:
        st = os.stat(step)
        if not fsguard.searchable_by_group(st, gid):
            raise StartupError(
                f"socket_group {group!r} cannot reach the socket: {step} ({fsguard.describe(st)}, group "
                f"{fsguard.group_name(st.st_gid)}) does not let the group pass; give it o+x, or g+x with "
                f"group {group}, or set socket to a path the group can reach",
                DaemonExit.CONFIG,
            )


def tighten_database_modes(database: Path) -> None:
    """The database, its WAL and shared memory: 0600, whatever an older slotd left."""
    for suffix in DATABASE_SUFFIXES:
        path = database.with_name(database.name + suffix)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode) and mode != DATABASE_FILE_MODE:
            os.chmod(path, DATABASE_FILE_MODE, follow_symlinks=False)
            log.warning("database_mode_fixed", path=str(path), was=f"{mode:04o}", now=f"{DATABASE_FILE_MODE:04o}")


@contextmanager
def hold_lock(directory: Path, what: str):
    """One daemon per directory: an exclusive flock on its slotd.lock, held for the
    daemon's life. The state directory has one (its database), and so does the runtime
    directory (its sessions: a second daemon there would sweep the first's spools as
    strays).

    Yields the lock's descriptor and what the last daemon wrote in it: its pid, then,
    once it had opened one, its database's path (see record_database).
    """
    lock_file = directory / LOCK_FILE
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StartupError(f"cannot use {what} {directory}: {lock_file}: {error.strerror}", DaemonExit.CONFIG) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StartupError(f"cannot use {what} {directory}: {lock_file} is not a regular file", DaemonExit.CONFIG)
        if st.st_uid != os.geteuid():
            raise StartupError(
                f"cannot use {what} {directory}: {lock_file} belongs to {fsguard.owner_name(st.st_uid)}",
                DaemonExit.CONFIG,
            )
        if stat.S_IMODE(st.st_mode) != LOCK_FILE_MODE:  # in our own directory: loose, not foreign
            os.fchmod(fd, LOCK_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").partition("\n")[0].strip() or "unknown"
            raise StartupError(f"another slotd (pid {holder}) is already running on {what} {directory}") from None
        history = os.pread(fd, LOCK_FILE_MAX, 0).decode(errors="replace")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield fd, history
    finally:
        os.close(fd)


@contextmanager
def hold_locks(config: Config):
    """The state directory's lock (its descriptor and history, see hold_lock), and the
    runtime directory's when it is another one."""
    with hold_lock(config.state_dir, "state directory") as state_lock:
        if config.runtime_dir == config.state_dir:
            yield state_lock
        else:
            with hold_lock(config.runtime_dir, "runtime directory"):
                yield state_lock


def record_database(lock_fd: int, database: Path) -> None:
    """Note in the lock file that a database was opened here: from then on a missing or
    empty one is a loss to report, not a first start."""
    os.pwrite(lock_fd, f"{os.getpid()}\ndatabase {database}\n".encode(), 0)


def check_database_present(config: Config, lock_history: str) -> None:
    """Refuse to create a new, empty database over sessions recorded in a lost one.

    An empty database beside spools in sessions/ would orphan their sessions (and, before
    this check, had their spools swept as stray while their shims ran); one where the
    lock file says a database was opened before would drop the history unannounced.
    """
    database = config.database
    if not database_is_empty(database):
        return
    state = "is empty" if database.exists() else "is missing"
    spools = sorted(entry.name for entry in config.sessions_dir.iterdir())
    if spools:
        listed = ", ".join(spools[:3]) + (", ..." if len(spools) > 3 else "")
        raise StartupError(
            f"database {database} {state} but {config.sessions_dir} holds {len(spools)} spool(s) of sessions it "
            f'recorded ({listed}), which may still run: restore the database (see the README, "Recovering the '
            f'database"), or move those directories out of {config.sessions_dir} to start with an empty one',
            DaemonExit.DATABASE,
        )
    if f"database {database}\n" in lock_history:
        raise StartupError(
            f"database {database} {state} but slotd has run here with it ({config.state_dir / LOCK_FILE} says so): restore it "
            f'(see the README, "Recovering the database"), or delete {config.state_dir / LOCK_FILE} to start with an empty one',
            DaemonExit.DATABASE,
        )


class Daemon:
    """One run of slotd: its signals, its shutdown, and the nursery tree of its parts."""

    def __init__(
        self, config: Config, session_umask: int = 0o022, lock_fd: int | None = None, lock_history: str = ""
    ) -> None:
        self.config = config
        self.session_umask = session_umask
        self.lock_fd = lock_fd
        self.lock_history = lock_history
        # Why the daemon stopped on its own: its database is no longer the file it opened.
        self.failure: str | None = None
        self.shutdown_requested = trio.Event()
        self.shutdown_mode = config.on_shutdown
        # Cancelled by a shutdown request that arrives before READY.
        self.startup_scope = trio.CancelScope()
        self.commands: Commands | None = None

    def request_shutdown(self, mode: str | None) -> None:
        if not self.shutdown_requested.is_set():
            self.shutdown_mode = mode or self.config.on_shutdown
            self.shutdown_requested.set()
            self.startup_scope.cancel()
            if self.commands is not None:
                self.commands.shutting_down = True

    def database_lost(self, problem: str) -> None:
        """Stop rather than write on into a file nobody will read; sessions keep running
        (their shims keep their spools) for a daemon started on the real database."""
        if self.failure is None:
            self.failure = problem
            log.error("database_lost", problem=problem, action="stopping, leaving sessions running")
            self.request_shutdown("keep")

    async def watch_signals(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("sighup_ignored", hint="restart the daemon to reload its configuration")
                    continue
                log.info("shutdown_signal", signal=signal.Signals(signum).name, mode=self.config.on_shutdown)
                self.request_shutdown(None)

    async def run(self) -> None:
        config = self.config
        tighten_database_modes(config.database)
        check_database_present(config, self.lock_history)
        try:
            store = Store(config.database)
        except SchemaTooNew as error:
            raise StartupError(
                f"{config.database} has schema version {error.found}, newer than this slotd ({__version__}) "
                f"knows ({error.known}): run the slotd that wrote it, or give this one another state_dir",
                DaemonExit.CONFIG,
            ) from None
        if self.lock_fd is not None:
            record_database(self.lock_fd, config.database)
        checkpointer = Checkpointer(config.database)
        checkpoints = BackgroundThread("slotd-checkpt")
        writer = DatabaseWriter(store)
        readers = ReaderPool(config.database)
        ingestor = Ingestor(writer, config.flush_interval, config.batch_max_bytes)
        slots = SlotManager(config, writer, ingestor, self.session_umask)
        commands = self.commands = Commands(config, slots, readers, writer, ingestor, self.request_shutdown)
        socket_file: socketfile.SocketFile | None = None
        try:
            async with trio.open_nursery() as outer:
                await outer.start(ingestor.run)
                async with trio.open_nursery() as inner:
                    await inner.start(self.watch_signals)
                    await inner.start(slots.run)
                    await inner.start(maintenance.database_watch_loop, store, self.database_lost)
                    accepting = None
                    with self.startup_scope:
                        counts = await recovery.reconcile(config, writer, ingestor, slots)
                        log.info("reconciled", **counts)
                        sock, socket_file = await socketfile.bind_socket(config.socket, socket_group_id(config))
                        accepting = await inner.start(
                            control.serve, sock, commands, control.PeerPolicy(config.socket_group)
                        )
                        await inner.start(maintenance.checkpoint_loop, ingestor, writer, checkpointer, checkpoints)
                        await inner.start(maintenance.retention_loop, config, writer, readers)
                        await inner.start(maintenance.status_loop, config, slots, readers)
                        if (interval := systemd.watchdog_interval()) is not None:
                            await inner.start(maintenance.watchdog_loop, writer, interval)
                        slots.queue.wake()
                        systemd.notify("READY=1", f"STATUS={await maintenance.status_text(config, slots, readers)}")
                        log.info(
                            "ready",
                            pid=os.getpid(),
                            socket=str(config.socket),
                            slots=slots.live.slots,
                            version=__version__,
                        )
                        release_library_log()
                    await self.shutdown_requested.wait()
                    systemd.notify("STOPPING=1")
                    log.info("shutting_down", mode=self.shutdown_mode, live=len(slots.live))
                    # Stop serving new clients and dispatching; keep ingesting.
                    if accepting is not None:
                        accepting.cancel()
                    if socket_file is not None:
                        socket_file.remove()
                    if self.shutdown_mode == "stop":
                        await slots.controls.stop_all()
                    inner.cancel_scope.cancel()
                outer.cancel_scope.cancel()
        finally:
            # No await in here: nothing can cancel it, and the socket goes first.
            # Only the socket this daemon bound: never a file it refused to replace,
            # nor a socket another daemon bound there since.
            if socket_file is not None:
                socket_file.remove()
            readers.close()
            writer.close()
            checkpoints.close()
            if self.failure is not None:
                leave_journal_on_close(checkpointer.db, store.db)
            else:
                try:
                    checkpointer.checkpoint()
                except apsw.Error as error:  # a full disk: the next start replays the WAL
                    log.warning("final_checkpoint_failed", error=str(error))
            checkpointer.close()
            store.close()
            if self.failure is not None:
                for moved in store.set_aside_journal():
                    log.warning("database_journal_set_aside", path=str(moved))
        log.info("stopped", left_running=len(slots.live))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="slotd", description="Supervise long-running command-line sessions.")
    parser.add_argument(
        "--config", "-c", help="config file (default: $SLOTD_CONFIG, XDG, /etc/slotd/config.toml, built-in)"
    )
    parser.add_argument("--check-config", action="store_true", help="read the configuration, print it, and exit")
    parser.add_argument("--version", action="version", version=f"slotd {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"slotd: configuration error: {error}", file=sys.stderr)
        sys.exit(DaemonExit.CONFIG)
    if args.check_config:
        print(
            f"config: {config.source or 'built-in defaults'}\nstate_dir: {config.state_dir}\nruntime_dir: {config.runtime_dir}\nsocket: {config.socket}\nslots: {config.slots}"
        )
        return
    configure_logging(config.log_level, config.log_format)
    session_umask = os.umask(DAEMON_UMASK)
    try:
        config = prepare_directories(config)
        with hold_locks(config) as (lock_fd, lock_history):
            # Before anything is reconciled: a daemon of another state directory may
            # answer on this socket path (checked again when binding, for a race).
            trio.run(socketfile.check_socket_free, config.socket)
            run_until_stopped(Daemon(config, session_umask, lock_fd, lock_history))
    except fsguard.PathError as error:
        refuse(str(error), DaemonExit.CONFIG)
    except (SocketInUse, SocketPathError, StartupError) as error:
        refuse(str(error), exit_code_of(error))


def exit_code_of(error: BaseException) -> int:
    if isinstance(error, StartupError):
        return error.exit_code
    if isinstance(error, SocketInUse):
        return DaemonExit.ALREADY_RUNNING
    return DaemonExit.CONFIG  # a path that is not a socket, or too long for one: the configuration's


def refuse(message: str, exit_code: int) -> None:
    """Refuse to start: one line on stderr, no traceback, a status systemd can act on."""
    print(f"slotd: {message}", file=sys.stderr)
    sys.exit(exit_code)


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


DAMAGED_DATABASE_ERRORS = (apsw.CorruptError, apsw.NotADBError)


def run_until_stopped(daemon: Daemon) -> None:
    database = daemon.config.database
    try:
        with library_log_held():
            trio.run(daemon.run)
    except* (StartupError, SocketInUse, SocketPathError) as group:
        error = leaves(group)[0]
        refuse(str(error), exit_code_of(error))
    except* DAMAGED_DATABASE_ERRORS as group:
        # SQLite's own words say what is wrong; a traceback would add nothing for the
        # operator, whose way out is in the README.
        error = leaves(group)[0]
        refuse(
            f"database {database} is damaged ({error}): recover it with sqlite3's .recover or .dump, or move it aside "
            f'(see the README, "Recovering the database")',
            DaemonExit.DATABASE,
        )
    except* (OSError, apsw.Error) as group:
        # Say what failed, not "Exceptions from Trio nursery"; the traceback goes to the log.
        for error in leaves(group):
            log.error("daemon_failed", error=f"{type(error).__name__}: {error}", exc_info=error)
            print(f"slotd: cannot run: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(DaemonExit.FAILED)
    if daemon.failure is not None:
        refuse(
            f"{daemon.failure} while slotd ran: stopped, leaving its sessions running; restore the database "
            f'(see the README, "Recovering the database") before starting slotd again',
            DaemonExit.DATABASE,
        )


if __name__ == "__main__":
    main()
