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
import time
from contextlib import contextmanager
from pathlib import Path

import apsw
import structlog
import trio

from supervisor import __version__, control, recovery, retention, systemd
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

# A passive checkpoint runs when the WAL passes this size, or once ingest goes idle.
CHECKPOINT_WAL_BYTES = 32 * 1024 * 1024
CHECKPOINT_WAL_BYTES_BUSY = 512 * 1024 * 1024
MAINTENANCE_INTERVAL = 1.0
PRUNE_INTERVAL = 60.0


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

    async def status_text(self, slots: SlotManager) -> str:
        """The STATUS= line: "2/3 slots busy, 1 queued"."""
        queued = await slots.writer.run(slots.store.count_with_status, ["queued"])
        draining = ", draining" if slots.draining else ""
        return f"{len(slots.live)}/{self.config.slots} slots busy, {queued} queued{draining}"

    async def maintenance(self, slots: SlotManager, ingestor: Ingestor, checkpointer: Checkpointer, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """WAL checkpoints off the capture path, shim reaping, systemd STATUS and WATCHDOG."""
        limiter = trio.CapacityLimiter(1)
        wal = Path(f"{self.config.database}-wal")
        checkpointed_after = -1
        watchdog = systemd.watchdog_interval()
        last_status = ""
        next_prune = time.monotonic()
        task_status.started()
        interval = min(MAINTENANCE_INTERVAL, watchdog or MAINTENANCE_INTERVAL)
        while True:
            await trio.sleep(interval)
            slots.reap_finished_shims()
            await retention.enforce_session_cap(slots.writer, self.config.retention)
            if time.monotonic() >= next_prune:
                await retention.enforce_age_and_budget(slots.writer, self.config.retention)
                next_prune = time.monotonic() + PRUNE_INTERVAL
            try:
                wal_bytes = wal.stat().st_size
            except FileNotFoundError:
                wal_bytes = 0
            idle = ingestor.lag() == 0 and time.monotonic() - ingestor.last_commit_at > 1.0
            # A checkpoint beside a busy capture costs it ~15 %: wait for a lull unless
            # the WAL grows past what readers should have to scan.
            busy_limit = CHECKPOINT_WAL_BYTES if not ingestor.saturated() else CHECKPOINT_WAL_BYTES_BUSY
            if wal_bytes > busy_limit or (idle and ingestor.rows_committed != checkpointed_after and wal_bytes):
                await trio.to_thread.run_sync(checkpointer.checkpoint, limiter=limiter)
                checkpointed_after = ingestor.rows_committed
            status = await self.status_text(slots)
            if status != last_status:
                systemd.notify(f"STATUS={status}")
                last_status = status
            # The loop ran to here, so trio makes progress; the writer must too.
            if watchdog and slots.writer.stalled_for() < 2 * watchdog:
                systemd.notify("WATCHDOG=1")

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
                        await inner.start(self.maintenance, slots, ingestor, checkpointer)
                        slots.wake_dispatch()
                        systemd.notify("READY=1", f"STATUS={await self.status_text(slots)}")
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


def run_until_stopped(config: Config) -> None:
    try:
        trio.run(Daemon(config).run)
    except* (control.SocketPathError, OSError, apsw.Error) as group:
        for error in group.exceptions:
            print(f"slotd: cannot run: {error}", file=sys.stderr)
        sys.exit(EXIT_STARTUP_FAILED)

if __name__ == "__main__":
    main()
