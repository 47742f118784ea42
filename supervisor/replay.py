"""What to send a terminal so that it shows a tty session's current screen.

A terminal's screen is what the bytes written to it since its last full redraw made of
it. So rather than keep a terminal emulator fed with every byte of every tty session in
the daemon (pyte, the maintained Python one, takes 1.1 MB/s of one core on this
project's 2-core reference machine, bench/screen.py, where one session can print tens of
MB/s: the daemon would fall behind, and stall its event loop with it), `screen` finds the newest full redraw in the last REPLAY_WINDOW bytes of the
session's output and sends everything from there; the client's own terminal, a real
emulator, draws it. Full-screen programs clear the screen when they start, when their
window is resized and when asked to (Ctrl-L), so their screen is right; a program that
only prints lines looks right from any line on.

Bytes before the redraw may have set modes that the screen depends on: the alternate
screen, cursor keys and keypad in application mode, a hidden cursor, bracketed paste,
mouse reporting. The last setting of each, found in the window, is sent first.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from supervisor.model import Stream
from supervisor.store import Reader

# How far back to look for a full redraw. Past it, the screen is drawn from the first
# line that starts in the window: right for a program that prints lines, and for one
# that redraws every frame from the top (top, watch); another needs a Ctrl-L.
REPLAY_WINDOW = 1 << 20
# What a program sends to draw its whole screen anew: clear it (ED 2, or home then ED
# 0), reset the terminal (RIS), or switch to the alternate screen, which starts empty.
FULL_REDRAW = re.compile(rb"\x1b\[2J|\x1b\[H\x1b\[0?J|\x1b\[1;1H\x1b\[0?J|\x1bc|\x1b\[\?(?:1049|1047|47)h")
# DEC private modes (CSI ? Pm h / l) whose setting outlives the redraw that follows it.
PRIVATE_MODE = re.compile(rb"\x1b\[\?([0-9;]{1,40})([hl])")
KEPT_MODES = frozenset(
    {
        1,  # cursor keys send application sequences (ESC O A): vim, less
        25,  # cursor shown
        47,  # alternate screen
        1000,  # mouse reporting: clicks
        1002,  # ... and drags
        1003,  # ... and every motion
        1006,  # ... in SGR encoding
        1047,  # alternate screen
        1049,  # alternate screen, with the cursor saved
        2004,  # bracketed paste
    }
)
# The keypad in application mode (DECKPAM, ESC =) or numeric (DECKPNM, ESC >).
KEYPAD_MODE = re.compile(rb"\x1b[=>]")
# Sent before the replay: attributes reset, cursor home, screen cleared, so nothing of
# what the client's terminal showed before stays.
CLEAR = b"\x1b[0m\x1b[H\x1b[2J"


@dataclass(frozen=True)
class Replay:
    """A tty session's screen as bytes to write to a terminal, and the last transcript
    row they account for: the session's rows after `through` carry on from them."""

    data: bytes
    through: int


def screen_replay(reader: Reader, session_id: str) -> Replay:
    """The bytes that draw the session's screen as of its last committed row."""
    through = reader.last_seq(session_id)
    chunks: list[bytes] = []
    size = 0
    before = through + 1
    complete = True  # the window holds the session's whole output
    while size < REPLAY_WINDOW:
        page = reader.rows_before(session_id, before, 500, [Stream.TTY], max_bytes=REPLAY_WINDOW - size)
        if not page:
            break
        for row in page:
            chunks.append(row.data)
            size += len(row.data)
        before = page[-1].seq
    else:
        complete = before <= 1 or not reader.rows_before(session_id, before, 1, [Stream.TTY])
    output = b"".join(reversed(chunks))
    return Replay(replay_of(output, complete), through)


def replay_of(output: bytes, complete: bool) -> bytes:
    """What draws the screen that `output` (the end of a terminal's output, all of it if
    `complete`) leaves: the modes it set, then the output from its last full redraw."""
    start = redraw_start(output, complete)
    return CLEAR + modes_before(output, start) + output[start:]


def redraw_start(output: bytes, complete: bool) -> int:
    """Where the last full redraw begins; else the start of the output if it is all
    there, else the first line that begins in it."""
    last = last_match(FULL_REDRAW, output, len(output))
    if last is not None:
        return last.start()
    if complete:
        return 0
    newline = output.find(b"\n")
    return len(output) if newline < 0 else newline + 1


def modes_before(output: bytes, start: int) -> bytes:
    """The sequences that set each kept mode as the output before `start` last left it."""
    settings: dict[int, bytes] = {}
    for match in PRIVATE_MODE.finditer(output, 0, start):
        for parameter in match.group(1).split(b";"):
            if parameter.isdigit() and int(parameter) in KEPT_MODES:
                settings[int(parameter)] = match.group(2)
    keypad = last_match(KEYPAD_MODE, output, start)
    sequences = [b"\x1b[?%d%s" % (mode, setting) for mode, setting in settings.items()]
    if keypad is not None:
        sequences.append(keypad.group())
    return b"".join(sequences)


def last_match(pattern: re.Pattern[bytes], data: bytes, end: int) -> re.Match[bytes] | None:
    """The last match of pattern in data[:end]."""
    last = deque(pattern.finditer(data, 0, end), maxlen=1)
    return last[0] if last else None
