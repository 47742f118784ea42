"""Configuration: frozen dataclasses read from config.toml.

Every error names the file, the key and what was expected. Relative paths in a file
resolve against that file's directory, so ``slotd --config config.toml`` from a checkout
keeps its state beside the checkout.
"""

from __future__ import annotations

import dataclasses
import grp
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import re2

from supervisor.errors import ConfigError
from supervisor.model import MAX_SLOTS, NICE_MAX, SESSION_NICE_DEFAULT

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
PiB = 1024 * TiB


@dataclass(frozen=True)
class Retention:
    """The [retention] table: per-session cap, age and database budget."""

    # Transcript bytes kept per session (head and tail, with a marker between); 0 = no cap.
    max_session_bytes: int = 256 * MiB
    # Ended sessions older than this many days are pruned; 0 = keep forever.
    max_age_days: float = 90.0
    # Oldest ended sessions are pruned while the database is larger; 0 = no budget.
    max_db_bytes: int = 0


@dataclass(frozen=True)
class Config:
    """slotd's configuration, every key checked at load (config.toml documents each)."""

    source: Path | None
    state_dir: Path
    runtime_dir: Path
    socket: Path
    slots: int = 3
    socket_group: str | None = None
    stop_timeout: float = 10.0
    # The nice value sessions' commands run at, below the daemon's (start's nice overrides).
    session_nice: int = SESSION_NICE_DEFAULT
    checkpoint_pattern: str | None = None
    flush_interval: float = 0.05
    batch_max_bytes: int = 4 * MiB
    max_chunk_bytes: int = 64 * KiB
    spool_segment_bytes: int = 8 * MiB
    spool_max_bytes: int = 256 * MiB
    on_shutdown: str = "keep"
    log_level: str = "info"
    log_format: str = "auto"
    retention: Retention = Retention()

    @property
    def database(self) -> Path:
        return self.state_dir / "slotd.db"

    @property
    def sessions_dir(self) -> Path:
        return self.runtime_dir / "sessions"

    @property
    def checkpoint_regex(self) -> re2._Regexp | None:
        if not self.checkpoint_pattern:
            return None
        return compile_checkpoint_pattern(self.checkpoint_pattern)


def compile_checkpoint_pattern(pattern: str) -> re2._Regexp:
    """The checkpoint pattern as an RE2 program over raw output bytes (raises re2.error).

    Session output is untrusted: RE2 matches in time linear in its length, where a
    backtracking engine can spend hours on one line. Latin-1 mode makes every byte one
    character, so output that is not UTF-8 is matched like any other, `.` is one byte,
    and non-ASCII text in the pattern matches its UTF-8 bytes.
    """
    options = re2.Options()
    options.encoding = re2.Options.Encoding.LATIN1
    options.log_errors = False  # the caller reports the error; RE2 would also print it to stderr
    return re2.compile(pattern.encode(), options)


# Constructs RE2 refuses that backtracking engines accept, recognised by RE2's error
# text (which quotes the construct's syntax, not its name).
_UNSUPPORTED_CONSTRUCTS = (
    (re.compile(r"invalid escape sequence: \\(?:[1-9]|g)"), "a backreference"),
    (re.compile(r"invalid perl operator: \(\?P$"), "a named backreference"),
    (re.compile(r"invalid perl operator: \(\?[=!]$"), "lookahead"),
    (re.compile(r"invalid perl operator: \(\?<[=!]$"), "lookbehind"),
    (re.compile(r"invalid perl operator: \(\?>$"), "an atomic group"),
    (re.compile(r"bad repetition operator: [*+?}]\+$"), "a possessive quantifier"),
)


def _checkpoint_pattern_error(pattern: str) -> str | None:
    """Why RE2 cannot use pattern, naming the construct where it is one RE2 lacks; None if it can."""
    try:
        compile_checkpoint_pattern(pattern)
    except re2.error as error:
        reason = error.args[0].decode("utf-8", "replace") if error.args else str(error)
        construct = next((name for test, name in _UNSUPPORTED_CONSTRUCTS if test.search(reason)), None)
        if construct:
            reason += f"; {construct} is not supported by RE2, which matches output in linear time"
        return f"RE2 cannot compile {pattern!r}: {reason}"
    return None


Check = Callable[[Any], bool]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer_in(low: int, high: int) -> tuple[Check, str]:
    """A check for an integer in [low, high], and its description for error messages."""

    def check(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    return check, f"an integer from {low} to {high}"


def _bytes_in(low: int, high: int, note: str = "") -> tuple[Check, str]:
    """A check for a byte count in [low, high], described with binary units."""
    return _integer_in(low, high)[0], f"a number of bytes from {_size(low)} to {_size(high)}{note}"


def _number_in(low: float, high: float, unit: str, note: str = "") -> tuple[Check, str]:
    """A check for a finite number in [low, high] (never inf or nan), and its description."""
    return (
        lambda value: _is_number(value) and low <= value <= high
    ), f"a number of {unit} from {low:g} to {high:g}{note}"


def _size(count: int) -> str:
    """A byte count as people write it in config.toml, with its binary unit where exact."""
    for name, unit in (("PiB", PiB), ("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if count >= unit and count % unit == 0:
            return f"{count} ({count // unit} {name})"
    return str(count)


# key: (check, what was expected). The ranges are documented in config.toml.
_TOP_KEYS: dict[str, tuple[Check, str]] = {
    "slots": _integer_in(1, MAX_SLOTS),
    "state_dir": (lambda v: isinstance(v, str) and v != "", "a directory path (string)"),
    "runtime_dir": (lambda v: isinstance(v, str) and v != "", "a directory path (string)"),
    "socket": (lambda v: isinstance(v, str) and v != "", "a socket path (string)"),
    "socket_group": (lambda v: isinstance(v, str), "a group name (string)"),
    "stop_timeout": _number_in(0, 86400, "seconds"),
    "session_nice": _integer_in(0, NICE_MAX),
    "checkpoint_pattern": (lambda v: isinstance(v, str), "a regular expression (string, RE2 syntax)"),
    "flush_interval": _number_in(0.001, 10, "seconds"),
    "batch_max_bytes": _bytes_in(KiB, GiB),
    "max_chunk_bytes": _bytes_in(KiB, 16 * MiB),
    "spool_segment_bytes": _bytes_in(64 * KiB, GiB),
    "spool_max_bytes": _bytes_in(MiB, TiB),
    "on_shutdown": (lambda v: v in ("keep", "stop"), '"keep" or "stop"'),
    "log_level": (lambda v: v in ("debug", "info", "warning", "error"), '"debug", "info", "warning" or "error"'),
    "log_format": (lambda v: v in ("auto", "json", "console"), '"auto", "json" or "console"'),
}
_RETENTION_KEYS: dict[str, tuple[Check, str]] = {
    "max_session_bytes": _bytes_in(0, TiB, ", 0 = no cap"),
    "max_age_days": _number_in(0, 36500, "days", ", 0 = keep forever"),
    "max_db_bytes": _bytes_in(0, PiB, ", 0 = no budget"),
}
_PATH_KEYS = ("state_dir", "runtime_dir", "socket")


def find_config_file(explicit: str | os.PathLike | None, environ: Mapping[str, str]) -> Path | None:
    """The config file to read, by the search order: --config, $SLOTD_CONFIG, XDG, /etc."""
    if explicit:
        return Path(explicit)
    if environ.get("SLOTD_CONFIG"):
        return Path(environ["SLOTD_CONFIG"])
    xdg = environ.get("XDG_CONFIG_HOME") or (str(Path(environ["HOME"]) / ".config") if environ.get("HOME") else None)
    candidates = [Path(xdg) / "slotd" / "config.toml"] if xdg else []
    candidates.append(Path("/etc/slotd/config.toml"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def load_config(explicit: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Find and read the configuration; built-in defaults when there is no file."""
    environ = os.environ if environ is None else environ
    path = find_config_file(explicit, environ)
    if path is None:
        return build_config({}, None, environ)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the configuration file: {error.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return build_config(data, path, environ)


def _check_table(table: Mapping[str, Any], keys: dict[str, tuple[Check, str]], where: str, prefix: str) -> None:
    for key, value in table.items():
        if key not in keys:
            known = ", ".join(sorted(keys))
            raise ConfigError(f"{where}: unknown key '{prefix}{key}' (known keys: {known})")
        check, expected = keys[key]
        if not check(value):
            raise ConfigError(f"{where}: key '{prefix}{key}': expected {expected}, got {value!r}")


def build_config(data: Mapping[str, Any], source: Path | None, environ: Mapping[str, str]) -> Config:
    where = str(source) if source else "built-in defaults"
    top = {k: v for k, v in data.items() if k != "retention"}
    _check_table(top, _TOP_KEYS, where, "")
    retention_table = data.get("retention", {})
    if not isinstance(retention_table, dict):
        raise ConfigError(f"{where}: key 'retention': expected a table, got {retention_table!r}")
    _check_table(retention_table, _RETENTION_KEYS, where, "retention.")

    base = source.resolve().parent if source else Path.cwd()
    paths = {key: (base / Path(top.pop(key)).expanduser()) for key in _PATH_KEYS if key in top}
    state_dir = paths.get("state_dir") or default_state_dir(environ)
    runtime_dir = paths.get("runtime_dir") or default_runtime_dir(environ, state_dir)
    socket = paths.get("socket") or runtime_dir / "slotd.sock"
    if top.get("socket_group") == "":
        top.pop("socket_group")
    if top.get("socket_group") is not None:
        try:
            grp.getgrnam(top["socket_group"])
        except (KeyError, ValueError):  # ValueError: a NUL in the name
            raise ConfigError(
                f"{where}: key 'socket_group': no group named {top['socket_group']!r} on this system"
            ) from None
    if top.get("checkpoint_pattern") == "":
        top.pop("checkpoint_pattern")
    if top.get("checkpoint_pattern") is not None:
        problem = _checkpoint_pattern_error(top["checkpoint_pattern"])
        if problem:
            raise ConfigError(f"{where}: key 'checkpoint_pattern': {problem}")
    for key in ("stop_timeout", "flush_interval"):
        if key in top:
            top[key] = float(top[key])
    _fit_spool_segments(top, where)
    return Config(
        source=source,
        state_dir=state_dir,
        runtime_dir=runtime_dir,
        socket=socket,
        retention=Retention(**{k: v for k, v in retention_table.items()}),
        **top,
    )


def _fit_spool_segments(top: dict[str, Any], where: str) -> None:
    """Keep spool_max_bytes a true bound: at least two segments must fit in it (the shim
    writes one while the daemon reads the other), and a segment must hold two records.

    The default segment size shrinks to fit a small spool_max_bytes; a segment size set
    in the file that does not fit is refused, as nothing says which of the two to trust.
    """
    spool_max = top.get("spool_max_bytes", Config.spool_max_bytes)
    if "spool_segment_bytes" not in top:
        top["spool_segment_bytes"] = min(Config.spool_segment_bytes, spool_max // 2)
    elif top["spool_segment_bytes"] > spool_max // 2:
        raise ConfigError(
            f"{where}: key 'spool_segment_bytes' ({top['spool_segment_bytes']}) must be at most half of "
            f"'spool_max_bytes' ({spool_max}), so that two segments fit: lower one or raise the other"
        )
    chunk = top.get("max_chunk_bytes", Config.max_chunk_bytes)
    if chunk > top["spool_segment_bytes"] // 2:
        raise ConfigError(
            f"{where}: key 'max_chunk_bytes' ({chunk}) must be at most half of the spool segment size "
            f"({top['spool_segment_bytes']}, from 'spool_segment_bytes' or half of 'spool_max_bytes'), "
            "so that a segment holds two records: lower one or raise the other"
        )


def _first_systemd_dir(value: str | None) -> Path | None:
    # systemd passes a colon-separated list when a unit names several directories.
    if value:
        return Path(value.split(":")[0])
    return None


def default_state_dir(environ: Mapping[str, str]) -> Path:
    systemd_dir = _first_systemd_dir(environ.get("STATE_DIRECTORY"))
    if systemd_dir:
        return systemd_dir
    if environ.get("XDG_STATE_HOME"):
        return Path(environ["XDG_STATE_HOME"]) / "slotd"
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "slotd"


def default_runtime_dir(environ: Mapping[str, str], state_dir: Path) -> Path:
    systemd_dir = _first_systemd_dir(environ.get("RUNTIME_DIRECTORY"))
    if systemd_dir:
        return systemd_dir
    if environ.get("XDG_RUNTIME_DIR"):
        return Path(environ["XDG_RUNTIME_DIR"]) / "slotd"
    return state_dir / "run"


def replace(config: Config, **changes: Any) -> Config:
    return dataclasses.replace(config, **changes)
