"""How a request's arguments are checked: the Arg each request field carries, the checks
(types, ranges, what the kernel could not pass on), and the words an error uses to say
what a value must be. protocol.py's request classes are built from these.
"""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor import jsonlimits
from supervisor.model import (
    ALL_STATUSES,
    MAX_MEMORY_LIMIT,
    MAX_TERMINAL_SIDE,
    MAX_TIMEOUT,
    MIN_MEMORY_LIMIT,
    NICE_MAX,
    STREAMS,
)

# What a session's labels may take, as JSON.
MAX_LABELS_BYTES = 64 * 1024


@dataclass(frozen=True)
class Arg:
    """How parse_request reads one argument: a value must pass check, else the error
    says it must be `expected`; an absent one is an error if required, else default."""

    check: Callable[[Any], bool]
    expected: str
    required: bool = False
    default: Any = None


INT64 = 1 << 63


def is_int(value: Any) -> bool:
    # SQLite stores 64-bit integers: anything wider is refused here, not deep inside.
    return isinstance(value, int) and not isinstance(value, bool) and -INT64 <= value < INT64


def is_str(value: Any) -> bool:
    return jsonlimits.is_text(value)


def is_runnable(value: Any) -> bool:
    # The kernel takes argv, env and paths as C strings: a NUL cannot get through exec.
    return is_str(value) and "\0" not in value


def is_number(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return is_int(value)


def is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(is_str(item) for item in value)


def is_argv(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and value[0] != "" and all(is_runnable(item) for item in value)


def is_env_name(value: Any) -> bool:
    # execve reads "NAME=value": a name with "=" or nothing before it would be misread.
    return is_runnable(value) and value != "" and "=" not in value


def is_env(value: Any) -> bool:
    return isinstance(value, dict) and all(is_env_name(k) and is_runnable(v) for k, v in value.items())


def is_labels(value: Any) -> bool:
    if not (isinstance(value, dict) and jsonlimits.is_plain(value)):
        return False
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()) <= MAX_LABELS_BYTES


def is_terminal_side(value: Any) -> bool:
    return is_int(value) and 1 <= value <= MAX_TERMINAL_SIDE


def is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def is_non_negative_int(value: Any) -> bool:
    return is_int(value) and value >= 0


def is_nice(value: Any) -> bool:
    # Only less urgent than the daemon: a session never competes with it on equal terms.
    return is_int(value) and 0 <= value <= NICE_MAX


def is_timeout(value: Any) -> bool:
    return is_number(value) and 0 < value <= MAX_TIMEOUT


def is_memory_limit(value: Any) -> bool:
    return is_int(value) and MIN_MEMORY_LIMIT <= value <= MAX_MEMORY_LIMIT


def is_statuses(value: Any) -> bool:
    items = [value] if isinstance(value, str) else value
    return is_str_list(items) and all(item in ALL_STATUSES for item in items)


def is_stream(value: Any) -> bool:
    return value in STREAMS


def is_signal(value: Any) -> bool:
    if is_int(value):
        return 0 < value < signal.NSIG
    if isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        return name in signal.Signals.__members__
    return False


def is_mode(value: Any) -> bool:
    return value in ("keep", "stop")


def _one_of(names: tuple[str, ...]) -> str:
    """'"a", "b" or "c"': the names a message says an argument may be."""
    quoted = [f'"{name}"' for name in names]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


SESSION = "a session id or unique prefix (string)"
LABELS = f"a JSON object of at most {MAX_LABELS_BYTES // 1024} KiB as compact JSON (text that is UTF-8, integers within 64 bits)"
STATUSES = f"a status or list of statuses ({', '.join(ALL_STATUSES)})"
STREAM = _one_of(STREAMS)
SINCE_SEQ = "a sequence number >= 0 (rows after it)"
TIMEOUT = f"seconds it may run before it is stopped, more than 0 and at most {MAX_TIMEOUT}"
MEMORY_LIMIT = (
    f"bytes of address space each of its processes may take (RLIMIT_AS), {MIN_MEMORY_LIMIT} to {MAX_MEMORY_LIMIT}"
)
NICE = f"an integer from 0 to {NICE_MAX} (the nice value its command runs at; higher is less urgent)"


def arg(check: Callable[[Any], bool], expected: str, *, required: bool = False, default: Any = None) -> Any:
    """A request class's field for one argument, read as Arg says."""
    return field(metadata={"arg": Arg(check, expected, required, default)})
