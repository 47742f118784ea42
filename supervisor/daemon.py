"""slotd: the nursery tree, signals and the shutdown policy.

Start-up order is explicit: check (or create) the directories, lock the state
directory, check that no other daemon answers on the socket, open the database, start
the ingestor and the slot manager, reconcile what the last run left, bind the socket,
then tell systemd READY. Shutdown runs it backwards; the ingestor goes last so
everything read from a spool is committed.

A refusal to start is one line on stderr and a distinct exit status: 78 (EX_CONFIG)
for what the operator must change (the configuration, a directory's owner or mode, a
database from a newer slotd), which the systemd units keep from becoming a restart
loop; 75 (EX_TEMPFAIL) when another daemon holds the state directory or the socket.
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

from supervisor import __version__, control, fsguard, maintenance, recovery, systemd
from supervisor.commands import Commands
from supervisor.config import EXIT_CONFIG, Config, ConfigError, load_config, replace
from supervisor.database import DatabaseWriter, ReaderPool
from supervisor.ingest import Ingestor
from supervisor.logconfig import configure_logging
from supervisor.slots import SlotManager
from supervisor.store import Checkpointer, SchemaTooNew, Store

log = structlog.get_logger()

EXIT_ALREADY_RUNNING = 75
EXIT_STARTUP_FAILED = 1
# Files slotd creates are its own alone (the database holds every session's environment
# and output); sessions get the umask slotd was started with.
DAEMON_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
# A directory on the way to a socket_group socket: its group may pass, not list.
GROUP_PASS_MODE = 0o710
DATABASE_FILE_MODE = 0o600
LOCK_FILE = "slotd.lock"
LOCK_FILE_MODE = 0o600
DATABASE_SUFFIXES = ("", "-wal", "-shm")


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""

    def __init__(self, message: str, exit_code: int = EXIT_ALREADY_RUNNING) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def socket_group_id(config: Config) -> int | None:
    if not config.socket_group:
        return None
    try:
        return grp.getgrnam(config.socket_group).gr_gid
    except KeyError:
        raise StartupError(f"socket_group {config.socket_group!r} is not a group on this system", EXIT_CONFIG) from None


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
        if on_socket_path(directory):
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
    if gid is not None:
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
                EXIT_CONFIG,
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
    strays)."""
    lock_file = directory / LOCK_FILE
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StartupError(f"cannot use {what} {directory}: {lock_file}: {error.strerror}", EXIT_CONFIG) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StartupError(f"cannot use {what} {directory}: {lock_file} is not a regular file", EXIT_CONFIG)
        if st.st_uid != os.geteuid():
            raise StartupError(f"cannot use {what} {directory}: {lock_file} belongs to {fsguard.owner_name(st.st_uid)}", EXIT_CONFIG)
        if stat.S_IMODE(st.st_mode) != LOCK_FILE_MODE:  # in our own directory: loose, not foreign
            os.fchmod(fd, LOCK_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StartupError(f"another slotd (pid {holder}) is already running on {what} {directory}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextmanager
def hold_locks(config: Config):
    """The state directory's lock, and the runtime directory's when it is another one."""
    with hold_lock(config.state_dir, "state directory"):
        if config.runtime_dir == config.state_dir:
            yield
        else:
            with hold_lock(config.runtime_dir, "runtime directory"):
                yield


class Daemon:
    def __init__(self, config: Config, session_umask: int = 0o022) -> None:
        self.config = config
        self.session_umask = session_umask
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
        try:
            store = Store(config.database)
        except SchemaTooNew as error:
            raise StartupError(
                f"{config.database} has schema version {error.found}, newer than this slotd ({__version__}) "
                f"knows ({error.known}): run the slotd that wrote it, or give this one another state_dir",
                EXIT_CONFIG,
            ) from None
        checkpointer = Checkpointer(config.database)
        writer = DatabaseWriter(store)
        readers = ReaderPool(config.database)
        ingestor = Ingestor(writer, config.flush_interval, config.batch_max_bytes)
        slots = SlotManager(config, writer, ingestor, self.session_umask)
        commands = self.commands = Commands(config, slots, readers, ingestor, self.request_shutdown)
        socket_file = None
        try:
            async with trio.open_nursery() as outer:
                await outer.start(ingestor.run)
                async with trio.open_nursery() as inner:
                    await inner.start(self.watch_signals)
                    await inner.start(slots.run)
                    accepting = None
                    socket_file: control.SocketFile | None = None
                    with self.startup_scope:
                        counts = await recovery.reconcile(slots)
                        log.info("reconciled", **counts)
                        sock, socket_file = await control.bind_socket(config.socket, socket_group_id(config))
                        accepting = await inner.start(control.serve, sock, commands, control.PeerPolicy(config.socket_group))
                        await inner.start(maintenance.checkpoint_loop, ingestor, writer, checkpointer)
                        await inner.start(maintenance.retention_loop, config, writer, readers)
                        await inner.start(maintenance.status_loop, config, slots, readers)
                        if (interval := systemd.watchdog_interval()) is not None:
                            await inner.start(maintenance.watchdog_loop, writer, interval)
                        slots.wake_dispatch()
                        systemd.notify("READY=1", f"STATUS={await maintenance.status_text(config, slots, readers)}")
                        log.info("ready", pid=os.getpid(), socket=str(config.socket), slots=config.slots, version=__version__)
                    await self.shutdown_requested.wait()
                    systemd.notify("STOPPING=1")
                    log.info("shutting_down", mode=self.shutdown_mode, live=len(slots.live))
                    # Stop serving new clients and dispatching; keep ingesting.
                    if accepting is not None:
                        accepting.cancel()
                    if socket_file is not None:
                        socket_file.remove()
                    if self.shutdown_mode == "stop":
                        slots.draining = True
                        await slots.stop_all()
                    inner.cancel_scope.cancel()
                outer.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                # Only the socket this daemon bound: never a file it refused to replace,
                # nor a socket another daemon bound there since.
                if socket_file is not None:
                    socket_file.remove()
                readers.close()
                writer.close()
                try:
                    checkpointer.checkpoint()
                except apsw.Error as error:  # a full disk: the next start replays the WAL
                    log.warning("final_checkpoint_failed", error=str(error))
                checkpointer.close()
                store.close()
        log.info("stopped", left_running=len(slots.live))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="slotd", description="Supervise long-running command-line sessions.")
    parser.add_argument("--config", "-c", help="config file (default: $SLOTD_CONFIG, XDG, /etc/slotd/config.toml, built-in)")
    parser.add_argument("--check-config", action="store_true", help="read the configuration, print it, and exit")
    parser.add_argument("--version", action="version", version=f"slotd {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"slotd: configuration error: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    if args.check_config:
        print(f"config: {config.source or 'built-in defaults'}\nstate_dir: {config.state_dir}\nruntime_dir: {config.runtime_dir}\nsocket: {config.socket}\nslots: {config.slots}")
        return
    configure_logging(config.log_level, config.log_format)
    session_umask = os.umask(DAEMON_UMASK)
    try:
        config = prepare_directories(config)
        with hold_locks(config):
            # Before anything is reconciled: a daemon of another state directory may
            # answer on this socket path (checked again when binding, for a race).
            trio.run(control.check_socket_free, config.socket)
            run_until_stopped(config, session_umask)
    except fsguard.PathError as error:
        refuse(str(error), EXIT_CONFIG)
    except (control.SocketInUse, control.SocketPathError, StartupError) as error:
        refuse(str(error), exit_code_of(error))


def exit_code_of(error: Exception) -> int:
    if isinstance(error, StartupError):
        return error.exit_code
    if isinstance(error, control.SocketInUse):
        return EXIT_ALREADY_RUNNING
    return EXIT_CONFIG  # a path that is not a socket, or too long for one: the configuration's


def refuse(message: str, exit_code: int) -> None:
    """Refuse to start: one line on stderr, no traceback, a status systemd can act on."""
    print(f"slotd: {message}", file=sys.stderr)
    sys.exit(exit_code)


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def run_until_stopped(config: Config, session_umask: int) -> None:
    try:
        trio.run(Daemon(config, session_umask).run)
    except* (StartupError, control.SocketInUse, control.SocketPathError) as group:
        error = leaves(group)[0]
        refuse(str(error), exit_code_of(error))
    except* (OSError, apsw.Error) as group:
        # Say what failed, not "Exceptions from Trio nursery"; the traceback goes to the log.
        for error in leaves(group):
            log.error("daemon_failed", error=f"{type(error).__name__}: {error}", exc_info=error)
            print(f"slotd: cannot run: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(EXIT_STARTUP_FAILED)


if __name__ == "__main__":
    main()
