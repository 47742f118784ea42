"""Times as people type them to `logs --since/--until` (journalctl's habits), and as
`logs -t` shows them: local time unless a zone is given."""

from __future__ import annotations

import datetime
import re
from typing import NamedTuple

# A relative time's units, by every name journalctl and people use for them.
UNIT_SECONDS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
    **dict.fromkeys(("w", "week", "weeks"), 604800),
}
# "30s", "10 min ago", "-2h", "1.5 days ago".
RELATIVE = re.compile(r"-?\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]+)(?:\s+ago)?", re.ASCII | re.IGNORECASE)
# "18:24" or "18:24:05.5": today at that local time.
TIME_OF_DAY = re.compile(r"[0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?", re.ASCII)
DAYS_AGO = {"today": 0, "yesterday": 1, "tomorrow": -1}

FORMS = "a sequence number, a relative time (30s, 10m, 2h, 1d, '10 min ago'), 18:24, '2026-11-29 18:24', or ISO 8601"


class Bound(NamedTuple):
    """Where `--since`/`--until` puts a bound: at a sequence number or at a time (ISO, UTC)."""

    seq: int | None
    time: str | None


def parse_bound(text: str, now: datetime.datetime | None = None) -> Bound:
    """A `--since`/`--until` value; ValueError naming the forms it may take."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        return Bound(int(text), None)
    moment = parse_time(text, now or datetime.datetime.now().astimezone())
    if moment is None:
        raise ValueError(f"expected {FORMS}, got {text!r}")
    return Bound(None, moment.astimezone(datetime.UTC).isoformat(timespec="microseconds"))


def parse_time(text: str, now: datetime.datetime) -> datetime.datetime | None:
    """The moment text names (local time unless it gives a zone), or None."""
    lowered = text.lower()
    if lowered == "now":
        return now
    if lowered in DAYS_AGO:
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return local(midnight.replace(tzinfo=None) - datetime.timedelta(days=DAYS_AGO[lowered]))
    if (relative := RELATIVE.fullmatch(text)) and relative[2].lower() in UNIT_SECONDS:
        try:
            return now - datetime.timedelta(seconds=float(relative[1]) * UNIT_SECONDS[relative[2].lower()])
        except OverflowError:  # before the year 1
            return None
    if TIME_OF_DAY.fullmatch(text):
        # As journalctl: today, at that local time.
        text = f"{now.date().isoformat()} {text}"
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else local(moment)


def local(moment: datetime.datetime) -> datetime.datetime:
    """A naive time read as local time (in this process's time zone, TZ honoured)."""
    return moment.astimezone()


def local_stamp(unix: float) -> str:
    """A row's time as `logs -t` prints it: local, to the millisecond (and readable back
    by --since/--until)."""
    return datetime.datetime.fromtimestamp(unix).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
