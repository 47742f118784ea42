"""slotd: the nursery tree, signals and the shutdown policy.

Start-up order is explicit: lock the state directory, open the database, start the
ingestor and the slot manager, reconcile what the last run left, bind the socket, then
tell systemd READY. Shutdown runs it backwards; the ingestor goes last so everything
read from a spool is committed.
"""

from __future__ import annotations

import argparse
import fcntl
import grp
import os
import signal
import sys
from contextlib import contextmanager

import apsw
import structlog
import trio

from supervisor import __version__, control, maintenance, recovery, systemd
from supervisor.commands import Commands
from supervisor.config import EXIT_CONFIG, Config, ConfigError, load_config
from supervisor.database import DatabaseWriter, ReaderPool
from supervisor.ingest import Ingestor
from supervisor.logconfig import configure_logging
from supervisor.slots import SlotManager
from supervisor.store import Checkpointer, Store

log = structlog.get_logger()

EXIT_ALREADY_RUNNING = 75
EXIT_STARTUP_FAILED = 1



class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


@contextmanager
def hold_state_lock(config: Config):
    """One daemon per state directory: an exclusive flock held for the daemon's life."""
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(config.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StartupError(
                f"another slotd (pid {holder}) is already running on state directory {config.state_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
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
        config.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config.sessions_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if config.socket_group and config.socket.parent == config.runtime_dir:
            # Members must reach the socket: search (not read) permission on slotd's
            # own runtime directory; the spools below stay private (sessions/ is 0700).
            # A socket placed elsewhere keeps that directory's permissions.
            os.chown(config.runtime_dir, -1, grp.getgrnam(config.socket_group).gr_gid)
            os.chmod(config.runtime_dir, 0o710)
        store = Store(config.database)
        checkpointer = Checkpointer(config.database)
        writer = DatabaseWriter(store)
        readers = ReaderPool(config.database)
        ingestor = Ingestor(writer, config.flush_interval, config.batch_max_bytes)
        slots = SlotManager(config, writer, ingestor)
        commands = self.commands = Commands(config, slots, readers, ingestor, self.request_shutdown)
        try:
            async with trio.open_nursery() as outer:
                await outer.start(ingestor.run)
                async with trio.open_nursery() as inner:
                    await inner.start(self.watch_signals)
                    await inner.start(slots.run)
                    accepting = None
                    with self.startup_scope:
                        counts = await recovery.reconcile(slots)
                        log.info("reconciled", **counts)
                        sock = await control.bind_socket(config.socket, config.socket_group)
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
                        config.socket.unlink(missing_ok=True)
                    if self.shutdown_mode == "stop":
                        slots.draining = True
                        await slots.stop_all()
                    inner.cancel_scope.cancel()
                outer.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    config.socket.unlink()
                except FileNotFoundError:
                    pass
                readers.close()
                writer.close()
                checkpointer.checkpoint()
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
    try:
        with hold_state_lock(config):
            run_until_stopped(config)
    except StartupError as error:
        print(f"slotd: {error}", file=sys.stderr)
        sys.exit(EXIT_ALREADY_RUNNING)


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def run_until_stopped(config: Config) -> None:
    try:
        trio.run(Daemon(config).run)
    except* (control.SocketPathError, OSError, apsw.Error) as group:
        # Say what failed, not "Exceptions from Trio nursery"; the traceback goes to the log.
        for error in leaves(group):
            log.error("daemon_failed", error=f"{type(error).__name__}: {error}", exc_info=error)
            print(f"slotd: cannot run: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(EXIT_STARTUP_FAILED)


if __name__ == "__main__":
    main()
