"""slotctl attach: a tty session's terminal, here, as docker attach and tmux attach give.

The local terminal goes into raw mode, so every key reaches the session as typed (Ctrl-C
included). The session's screen is drawn first (the `screen` request: its output since
its last full redraw, see supervisor/replay.py), then its output follows (`follow` of
the tty stream from the row the screen accounts for). What is typed goes to the session
on a connection of its own (`send`): everything typed while one send is under way goes
in the next, so a paste or fast typing becomes a few stdin rows, not one per key. The
local window's size is the session's on attach and whenever it changes (SIGWINCH →
`resize`). The detach keys (Ctrl-P Ctrl-Q, as in docker) leave the session running. If
the daemon restarts, both connections come back by themselves and the output carries on
after the last row shown: nothing twice, nothing missed.
"""

from __future__ import annotations

import argparse
import base64
import os
import queue
import signal
import sys
import termios
import threading
import tty
from types import FrameType
from typing import Any

from supervisor.cli.commands import exit_status_of, own_terminal_size
from supervisor.cli.connection import Reconnecting, Stopped
from supervisor.cli.output import short_id
from supervisor.client import Client, RemoteError, result_of
from supervisor.errors import CliError, CliExit
from supervisor.model import Status, Stream
from supervisor.wire import decode_data

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
# The control characters docker's --detach-keys names besides ctrl-a to ctrl-z.
CONTROL_PUNCTUATION = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}
# Written when slotctl lets go of the terminal: the modes a session may have set through
# it (application cursor keys and keypad, a hidden cursor, mouse reporting, bracketed
# paste, colours) back to a shell's.
RESET_MODES = b"\x1b[0m\x1b[?1l\x1b>\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?2004l"
ALTERNATE_SCREEN_ON = (b"\x1b[?1049h", b"\x1b[?1047h", b"\x1b[?47h")
ALTERNATE_SCREEN_OFF = (b"\x1b[?1049l", b"\x1b[?1047l", b"\x1b[?47l")
INPUT_READ = 4096


def parse_detach_keys(spec: str) -> bytes:
    """docker's --detach-keys: comma-separated keys, each a character or ctrl-X."""
    keys = bytearray()
    for key in spec.split(","):
        if len(key) == 1:
            keys += key.encode()
        elif key.lower().startswith("ctrl-") and len(key) == 6 and key[5].isascii():
            char = key[5].lower()
            if "a" <= char <= "z":
                keys.append(ord(char) - ord("a") + 1)
            elif char in CONTROL_PUNCTUATION:
                keys.append(CONTROL_PUNCTUATION[char])
            else:
                keys.clear()
                break
        else:
            keys.clear()
            break
    if not keys:
        raise CliError(
            f"--detach-keys {spec!r}: expected keys separated by commas, each a character or ctrl-X "
            "(X one of a-z @ [ \\ ] ^ _), e.g. ctrl-p,ctrl-q",
            CliExit.USAGE,
        )
    return bytes(keys)


class DetachKeys:
    """Spots the detach sequence in what is typed. Keys that only began it are passed on
    with the key that broke it off, as docker does."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.matched = 0

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """What to send of data, and whether the sequence is complete (then the rest of
        data is dropped: the person is leaving)."""
        out = bytearray()
        for byte in data:
            if byte != self.keys[self.matched] and self.matched:
                out += self.keys[: self.matched]
                self.matched = 0
            if byte == self.keys[self.matched]:
                self.matched += 1
                if self.matched == len(self.keys):
                    self.matched = 0
                    return bytes(out), True
            else:
                out.append(byte)
        return bytes(out), False


class Keyboard:
    """slotctl's stdin, in raw mode when it is a terminal, restored on every way out."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.saved: list[Any] | None = None

    def __enter__(self) -> Keyboard:
        if os.isatty(self.fd):
            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


class Screen:
    """slotctl's stdout: the session's output as it comes, then the terminal given back
    as it was (alternate screen left, modes reset)."""

    def __init__(self) -> None:
        self.fd = sys.stdout.fileno()
        self.alternate = False

    def write(self, data: bytes) -> None:
        on = max(data.rfind(sequence) for sequence in ALTERNATE_SCREEN_ON)
        off = max(data.rfind(sequence) for sequence in ALTERNATE_SCREEN_OFF)
        if on != off:
            self.alternate = on > off
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def release(self) -> None:
        self.write(RESET_MODES + (b"\x1b[?1049l" if self.alternate else b"") + b"\r\n")


class InputSender:
    """Sends what is typed, and window sizes, on a connection of its own (a thread):
    the keys typed during one send go together in the next."""

    def __init__(self, args: argparse.Namespace, session_id: str) -> None:
        self.session_id = session_id
        self.daemon = Reconnecting(args, None)
        self.pending: queue.Queue[bytes | tuple[int, int]] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="attach-input", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def type(self, data: bytes) -> None:
        self.pending.put(data)

    def resize(self) -> None:
        size = own_terminal_size()
        if size is not None:
            self.pending.put((size.cols, size.rows))

    def _run(self) -> None:
        while True:
            items = [self.pending.get()]
            while not self.pending.empty():
                items.append(self.pending.get_nowait())
            typed = b"".join(item for item in items if isinstance(item, bytes))
            sizes = [item for item in items if isinstance(item, tuple)]
            try:
                if typed:
                    self._request("send", data_b64=base64.b64encode(typed).decode("ascii"))
                if sizes:
                    cols, rows = sizes[-1]
                    self._request("resize", cols=cols, rows=rows)
            except (RemoteError, CliError):
                # The session ended (the output side says so) or is not started yet: what
                # was typed meanwhile has nowhere to go.
                continue

    def _request(self, command: str, **args: Any) -> None:
        self.daemon.run(lambda client: client.request(command, session=self.session_id, **args))


class Attachment:
    """One `slotctl attach`: output in the main thread, keys read in another, input sent
    from a third."""

    def __init__(self, args: argparse.Namespace, client: Client, session: dict[str, Any], keys: bytes) -> None:
        self.session = session
        self.output = Reconnecting(args, client)
        self.input = InputSender(args, session["id"])
        self.detach_keys = DetachKeys(keys)
        self.screen = Screen()
        self.last_seq: int | None = None  # the last row shown, once the screen is drawn

    def run(self) -> int:
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGWINCH, signal.SIGTERM, signal.SIGHUP)}
        signal.signal(signal.SIGWINCH, self._window_changed)
        signal.signal(signal.SIGTERM, leave)
        signal.signal(signal.SIGHUP, leave)
        try:
            with Keyboard():
                try:
                    self.input.start()
                    self.input.resize()
                    threading.Thread(target=self._read_keys, name="attach-keys", daemon=True).start()
                    final = self.output.run(self._show)
                finally:
                    self.screen.release()
        except Stopped:  # the detach keys
            print(f"slotctl: detached from session {short_id(self.session['id'])}; it runs on", file=sys.stderr)
            return CliExit.OK
        finally:
            self.output.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        print(f"slotctl: session {short_id(final['id'])} {final['status']}", file=sys.stderr)
        return exit_status_of(final)

    def _show(self, client: Client) -> dict[str, Any]:
        """Draw the screen (once), then the output after it, to the session's end."""
        if self.last_seq is None:
            screen = client.request("screen", session=self.session["id"])
            self.screen.write(decode_data(screen))
            self.last_seq = screen["through"]
        for message in client.messages(
            "follow", session=self.session["id"], since_seq=self.last_seq, stream=Stream.TTY
        ):
            if "row" not in message:
                return result_of(message)
            if self.session["status"] == Status.QUEUED:
                # It has started: at this window's size, unless it was being started
                # just as the size was sent.
                self.session["status"] = Status.RUNNING
                self.input.resize()
            self.screen.write(decode_data(message["row"]))
            self.last_seq = message["row"]["seq"]
        raise ConnectionError("no reply")

    def _read_keys(self) -> None:
        while True:
            try:
                data = os.read(sys.stdin.fileno(), INPUT_READ)
            except OSError:
                return
            if not data:
                return  # stdin is not a terminal and has ended: watch on
            typed, detach = self.detach_keys.feed(data)
            if typed:
                self.input.type(typed)
            if detach:
                self.output.stop()  # the main thread leaves its wait for output
                return

    def _window_changed(self, _signum: int, _frame: FrameType | None) -> None:
        self.input.resize()


def leave(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM or SIGHUP: give the terminal back on the way out."""
    raise SystemExit(128 + signum)


def cmd_attach(client: Client, args: argparse.Namespace) -> int:
    keys = parse_detach_keys(args.detach_keys)
    session = client.request("show", session=args.id)
    name = short_id(session["id"])
    if not session["tty"]:
        raise CliError(
            f"session {name} has no terminal (started without --tty): `slotctl logs -f {name}` shows its output "
            f"and `slotctl send {name}` writes to it",
            CliExit.REFUSED,
        )
    if session["ended_at"] is not None:
        raise CliError(
            f"session {name} has ended ({session['status']}): `slotctl logs {name}` shows its output", CliExit.REFUSED
        )
    return Attachment(args, client, session, keys).run()
