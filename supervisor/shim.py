"""The per-session shim: the real parent of a session's command.

Standard library only, so it starts fast. The daemon starts one per session as
``python -m supervisor.shim SESSION_DIR``; it reads ``spec.json`` there (only from a
directory, a spec and a FIFO of its own user's that nobody else can write to: whoever
could would choose the command it runs), starts the command in its own process
group, and copies everything the command writes into the spool (see spool.py), in
the order it read it. It holds the command's stdin open through a FIFO, so the
daemon can come and go without the command ever seeing EOF, SIGPIPE or a blocked
write. Its last record is the command's exit status.
"""

from __future__ import annotations

import json
import os
import resource
import select
import selectors
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from supervisor import fsguard, linux, spool

READ_SIZE = 65536
# Stop reading operator input while this much is waiting for the command to read it.
STDIN_BUFFER_LIMIT = 1 << 20
# The daemon writes frames of at most PIPE_BUF bytes; a frame claiming more than this is
# not its, and waiting for it would grow the buffer without bound.
MAX_INPUT_FRAME = STDIN_BUFFER_LIMIT


class LineAssembler:
    """Cuts one stream into records of whole lines, at most max_chunk bytes each."""

    def __init__(self, kind: int, max_chunk: int) -> None:
        self.kind = kind
        self.max_chunk = max_chunk
        self.pending = bytearray()
        self.pending_since: float | None = None

    def feed(self, data: bytes, now: float) -> list[memoryview]:
        """Add data; return the chunks ready to store now.

        Chunks are views of the data read, not copies: at full speed every copy of a
        64 KiB read shows in the shim's CPU time.
        """
        pending_since = self.pending_since
        if self.pending:
            self.pending += data
            data = bytes(self.pending)
        view = memoryview(data)
        chunks: list[memoryview] = []
        last_newline = data.rfind(b"\n")
        if last_newline >= 0:
            chunks.extend(self._split_lines(data, view, last_newline + 1))
            rest = view[last_newline + 1 :]
            pending_since = now
        else:
            rest = view
            pending_since = pending_since if pending_since is not None else now
        # A line longer than max_chunk is split: memory stays bounded without a newline.
        while len(rest) >= self.max_chunk:
            chunks.append(rest[: self.max_chunk])
            rest = rest[self.max_chunk :]
            # What is left came in this read (less than max_chunk was held before it).
            pending_since = now
        self.pending = bytearray(rest)
        self.pending_since = pending_since if rest else None
        return chunks

    def _split_lines(self, data: bytes, view: memoryview, end: int) -> list[memoryview]:
        """Split data[:end] (whole lines) into chunks, cutting after a newline when one fits."""
        chunks = []
        start = 0
        while end - start > self.max_chunk:
            cut = data.rfind(b"\n", start, start + self.max_chunk)
            stop = cut + 1 if cut >= 0 else start + self.max_chunk
            chunks.append(view[start:stop])
            start = stop
        chunks.append(view[start:end])
        return chunks

    def flush(self) -> bytes:
        """Take the partial line, whatever its age."""
        data = bytes(self.pending)
        self.pending.clear()
        self.pending_since = None
        return data

    def deadline(self, flush_interval: float) -> float | None:
        if self.pending_since is None:
            return None
        return self.pending_since + flush_interval


class Shim:
    def __init__(self, session_dir: Path, spec: dict, dir_fd: int) -> None:
        self.session_dir = session_dir
        self.dir_fd = dir_fd  # the checked session directory, held open
        self.spec = spec
        self.flush_interval = float(spec["flush_interval"])
        self.stop_timeout = float(spec["stop_timeout"])
        self.name = linux.process_name(os.getpid()) or "python3"
        self.writer = spool.SpoolWriter(
            session_dir, int(spec["segment_bytes"]), int(spec["max_segments"]), self.on_spool_blocked, self.wait_for_spool
        )
        max_chunk = int(spec["max_chunk_bytes"])
        self.assemblers = {
            spool.STDOUT: LineAssembler(spool.STDOUT, max_chunk),
            spool.STDERR: LineAssembler(spool.STDERR, max_chunk),
        }
        self.selector = selectors.DefaultSelector()
        self.proc: subprocess.Popen | None = None
        self.stdin_buffer = bytearray()
        self.stdin_eof_requested = False
        self.fifo_buffer = bytearray()
        self.early_signals: list[int] = []
        self.pidfd: int | None = None  # readable once the command has exited
        self.exited_at: float | None = None  # monotonic, once the command is reaped
        self.ended_at: float | None = None  # the same moment in UNIX seconds, for EXIT
        self.killed_group = False

    # -- output --------------------------------------------------------------------

    def on_spool_blocked(self, blocked: bool) -> None:
        """Tell the daemon that the spool's disk is full, or has room again.

        By the shim's process name, which the daemon reads from /proc/PID/comm. The disk
        that refuses the spool may hold everything else too, so the message must need
        none of it: a marker file would fail, or take the last block, exactly when it is
        needed. The name costs no disk, only this process can set it, and it is still
        there for a daemon that restarts meanwhile (and plain for `ps`). What /proc
        shows otherwise (wchan, the sleeping state) cannot tell this wait from any other.
        """
        linux.set_own_name(spool.NO_SPACE_NAME if blocked else self.name)

    def wait_for_spool(self, seconds: float) -> None:
        """Spend a wait for room in the spool (a full disk, a daemon behind) reaping the
        command if it exits meanwhile.

        Reaping must not wait for writing: else an exited command stays a zombie, which
        no signal ends, for as long as the disk is full, and a stop waits with it.
        Its exit status waits in this process until the spool can take it.
        """
        if self.exited_at is None and self.pidfd is not None:
            ready, _, _ = select.select([self.pidfd], [], [], seconds)
            if ready:
                self.command_exited()
            return
        if self.exited_at is not None:
            self.kill_group_when_due()
        time.sleep(seconds)

    def command_exited(self) -> None:
        """Reap the command; what it left in its group is ended too, the way systemd ends
        a service's leftovers (SIGTERM now, SIGKILL after stop_timeout)."""
        assert self.proc is not None
        self.proc.wait()
        self.exited_at = time.monotonic()
        self.ended_at = time.time()
        signal_group(self.proc.pid, signal.SIGTERM)

    def kill_group_when_due(self) -> None:
        assert self.proc is not None
        if self.exited_at is not None and not self.killed_group and time.monotonic() >= self.exited_at + self.stop_timeout:
            signal_group(self.proc.pid, signal.SIGKILL)
            self.killed_group = True

    def emit(self, kind: int, chunks: list[bytes]) -> None:
        if not chunks:
            return
        # Bytes read earlier on the other stream go first, even as a partial line, so
        # the spool keeps the order the shim read them in.
        for other_kind, other in self.assemblers.items():
            if other_kind != kind and other.pending:
                self.writer.append(other_kind, other.flush())
        for chunk in chunks:
            self.writer.append(kind, chunk)

    def flush_due(self, now: float) -> None:
        for kind, assembler in self.assemblers.items():
            deadline = assembler.deadline(self.flush_interval)
            if deadline is not None and deadline <= now:
                self.writer.append(kind, assembler.flush())

    def next_timeout(self, now: float, extra: float | None) -> float | None:
        deadlines = [
            d for a in self.assemblers.values() if (d := a.deadline(self.flush_interval)) is not None
        ]
        if extra is not None:
            deadlines.append(extra)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    # -- input ---------------------------------------------------------------------

    def read_fifo(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        self.fifo_buffer += data
        while len(self.fifo_buffer) >= spool.FIFO_FRAME.size:
            kind, length = spool.FIFO_FRAME.unpack_from(self.fifo_buffer)
            if length > MAX_INPUT_FRAME:
                print(f"shim: input frame of {length} bytes is not the daemon's; dropping input", file=sys.stderr)
                self.fifo_buffer.clear()
                break
            end = spool.FIFO_FRAME.size + length
            if len(self.fifo_buffer) < end:
                break
            payload = bytes(self.fifo_buffer[spool.FIFO_FRAME.size : end])
            del self.fifo_buffer[:end]
            if kind == spool.FIFO_DATA:
                self.writer.append(spool.STDIN, payload)
                if self.proc is not None and self.proc.stdin is not None:
                    self.stdin_buffer += payload
            elif kind == spool.FIFO_EOF:
                self.stdin_eof_requested = True
            else:
                # Not the daemon's framing: the rest cannot be trusted to line up.
                print(f"shim: unknown input frame kind {kind}; dropping {len(self.fifo_buffer)} bytes", file=sys.stderr)
                self.fifo_buffer.clear()
        self.write_stdin()

    def write_stdin(self) -> None:
        stdin = self.proc.stdin if self.proc else None
        if stdin is None:
            self.stdin_buffer.clear()
            return
        try:
            while self.stdin_buffer:
                written = os.write(stdin.fileno(), self.stdin_buffer)
                del self.stdin_buffer[:written]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            # The command closed its stdin: what it will never read is dropped.
            self.stdin_buffer.clear()
            self.close_stdin()
            return
        if self.stdin_eof_requested and not self.stdin_buffer:
            self.close_stdin()
            return
        self._watch_stdin_writable(bool(self.stdin_buffer))

    def _watch_stdin_writable(self, want: bool) -> None:
        stdin = self.proc.stdin if self.proc else None
        if stdin is None:
            return
        registered = self._is_registered(stdin)
        if want and not registered:
            self.selector.register(stdin, selectors.EVENT_WRITE, "stdin")
        elif not want and registered:
            self.selector.unregister(stdin)

    def _is_registered(self, fileobj) -> bool:
        try:
            self.selector.get_key(fileobj)
            return True
        except KeyError:
            return False

    def close_stdin(self) -> None:
        assert self.proc is not None
        if self.proc.stdin is not None:
            if self._is_registered(self.proc.stdin):
                self.selector.unregister(self.proc.stdin)
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            self.proc.stdin = None

    # -- lifecycle -----------------------------------------------------------------

    def spawn(self) -> bool:
        cwd = self.spec["cwd"]
        env = dict(os.environ)
        env.update(self.spec["env"])
        try:
            if not os.path.isdir(cwd):
                raise MissingWorkingDirectory(cwd)
            self.proc = subprocess.Popen(
                self.spec["argv"],
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                bufsize=0,
            )
        except OSError as error:
            self.writer.append_event(
                spool.SPAWN_FAILED,
                {"reason": spawn_failure_reason(error), "detail": str(error), "ended_at": time.time()},
            )
            return False
        # Start ticks identify both processes for good: the daemon compares them with
        # what it finds after a restart, so a reused PID is never taken for ours.
        self.writer.append_event(
            spool.START,
            {
                "shim_pid": os.getpid(),
                "shim_start_ticks": linux.start_ticks(os.getpid()),
                "pid": self.proc.pid,
                "start_ticks": linux.start_ticks(self.proc.pid),
                "started_at": time.time(),
            },
        )
        return True

    def forward_signal(self, signum: int, _frame) -> None:
        """A signal sent to the shim is meant for the session: pass it to the group."""
        if self.proc is None:
            # Arrived while the command is being started: pass it on once it exists.
            self.early_signals.append(signum)
            return
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def refuse(self, reason: str, detail: str) -> int:
        """End without starting the command: the spool says why, as for a failed spawn."""
        print(f"shim: not starting the command: {detail}", file=sys.stderr)
        self.writer.append_event(spool.SPAWN_FAILED, {"reason": reason, "detail": detail, "ended_at": time.time()})
        self.writer.close()
        return 0

    def run(self) -> int:
        # Opened read-write: the shim is then always a writer of its own FIFO, so reads
        # never see EOF when the daemon closes its end or restarts.
        try:
            fifo = fsguard.open_owned(spool.STDIN_FIFO, os.O_RDWR | os.O_NONBLOCK, self.dir_fd, stat.S_IFIFO, "input FIFO")
        except FileNotFoundError:
            return self.refuse("input FIFO missing", f"its input FIFO {self.session_dir / spool.STDIN_FIFO} does not exist")
        except (OSError, fsguard.PathError) as error:
            return self.refuse("input FIFO not usable", f"its input FIFO in {self.session_dir}: {error}")
        # The handler goes in before the spawn: a SIGTERM just after START would
        # otherwise kill the shim and leave the command running without an EXIT to come.
        signal.signal(signal.SIGTERM, self.forward_signal)
        if not self.spawn():
            self.writer.close()
            return 0
        assert self.proc is not None and self.proc.stdout and self.proc.stderr
        for signum in self.early_signals:
            signal_group(self.proc.pid, signum)
        streams = {self.proc.stdout: spool.STDOUT, self.proc.stderr: spool.STDERR}
        for pipe in (*streams, self.proc.stdin):
            os.set_blocking(pipe.fileno(), False)
        for pipe, kind in streams.items():
            self.selector.register(pipe, selectors.EVENT_READ, kind)
        self.selector.register(fifo, selectors.EVENT_READ, "fifo")
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.selector.register(self.pidfd, selectors.EVENT_READ, "exit")

        open_streams = len(streams)
        while open_streams or self.exited_at is None:
            now = time.monotonic()
            group_deadline = None
            if self.exited_at is not None:
                group_deadline = self.exited_at + self.stop_timeout + (1.0 if self.killed_group else 0.0)
                if now >= group_deadline:
                    if self.killed_group:
                        break  # a process outside the group holds the pipes: stop here
                    self.kill_group_when_due()
                    continue
            events = self.selector.select(self.next_timeout(now, group_deadline))
            now = time.monotonic()
            for key, _mask in events:
                tag = key.data
                if tag in (spool.STDOUT, spool.STDERR):
                    try:
                        data = os.read(key.fd, READ_SIZE)
                    except BlockingIOError:
                        continue
                    assembler = self.assemblers[tag]
                    if data:
                        self.emit(tag, assembler.feed(data, now))
                    else:
                        self.selector.unregister(key.fileobj)
                        self.emit(tag, [c for c in [assembler.flush()] if c])
                        open_streams -= 1
                elif tag == "fifo":
                    self.read_fifo(key.fd)
                    if len(self.stdin_buffer) > STDIN_BUFFER_LIMIT:
                        self.selector.unregister(fifo)
                elif tag == "stdin":
                    self.write_stdin()
                    if len(self.stdin_buffer) <= STDIN_BUFFER_LIMIT and not self._is_registered(fifo):
                        self.selector.register(fifo, selectors.EVENT_READ, "fifo")
                elif tag == "exit":
                    self.selector.unregister(self.pidfd)
                    if self.exited_at is None:  # else reaped while the spool waited for room
                        self.command_exited()
            self.flush_due(now)

        for kind, assembler in self.assemblers.items():
            self.emit(kind, [c for c in [assembler.flush()] if c])
        signal_group(self.proc.pid, signal.SIGKILL)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        code = self.proc.returncode
        self.writer.append_event(
            spool.EXIT,
            {
                "exit_code": code if code >= 0 else None,
                "signal": -code if code < 0 else None,
                "ended_at": self.ended_at,
                "maxrss_kb": usage.ru_maxrss,
                "utime": usage.ru_utime,
                "stime": usage.ru_stime,
            },
        )
        self.writer.close()
        return 0


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class MissingWorkingDirectory(OSError):
    """The session's cwd is missing or not a directory (checked before exec, to say so plainly)."""

    def __init__(self, cwd: str) -> None:
        self.not_a_directory = os.path.exists(cwd)
        super().__init__(f"working directory {cwd!r} {'is not a directory' if self.not_a_directory else 'does not exist'}")


def spawn_failure_reason(error: OSError) -> str:
    if isinstance(error, MissingWorkingDirectory):
        return "working directory is not a directory" if error.not_a_directory else "working directory not found"
    if isinstance(error, FileNotFoundError):
        return "command not found"
    if isinstance(error, PermissionError):
        return "permission denied"
    return f"could not start: {error.strerror or error}"


def open_session(path: Path) -> tuple[Path, int, dict]:
    """The session directory's real path, a descriptor held on it, and its spec, each
    checked: ours, writable by nobody else, reached through directories only root or
    we can change, and no link followed at the last step."""
    real, missing = fsguard.walk(path)
    if missing or not real.exists():
        raise fsguard.PathError(f"session directory {path} does not exist")
    dir_fd = fsguard.open_dir(real)
    try:
        spec_fd = fsguard.open_owned(spool.SPEC_FILE, os.O_RDONLY, dir_fd, stat.S_IFREG, "spec")
        with open(spec_fd, "rb") as spec_file:
            spec = json.loads(spec_file.read())
        if not isinstance(spec, dict):
            raise ValueError("not a JSON object")
    except BaseException:
        os.close(dir_fd)
        raise
    return real, dir_fd, spec


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m supervisor.shim SESSION_DIR")
    try:
        session_dir, dir_fd, spec = open_session(Path(sys.argv[1]))
    except (OSError, ValueError, fsguard.PathError) as error:
        # Nothing of this directory can be trusted, the spool included: say so and end.
        sys.exit(f"shim: refusing to run from {sys.argv[1]}: {error}")
    # Handlers, not SIG_IGN: an ignored signal would stay ignored in the command after
    # exec, and the command must get SIGINT and SIGHUP as usual.
    for signum in (signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: None)
    sys.exit(Shim(session_dir, spec, dir_fd).run())


if __name__ == "__main__":
    main()
