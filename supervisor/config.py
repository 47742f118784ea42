"""Configuration: frozen dataclasses read from config.toml.

Every error names the file, the key and what was expected. Relative paths in a file
resolve against that file's directory, so ``slotd --config config.toml`` from a checkout
keeps its state beside the checkout.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

# The exit status for a configuration error; the systemd units list it in
# RestartPreventExitStatus= so a typo does not become a restart loop (EX_CONFIG).
EXIT_CONFIG = 78

KiB = 1024
MiB = 1024 * KiB


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Retention:
    # Transcript bytes kept per session (head and tail, with a marker between); 0 = no cap.
    max_session_bytes: int = 256 * MiB
    # Ended sessions older than this many days are pruned; 0 = keep forever.
    max_age_days: float = 90.0
    # Oldest ended sessions are pruned while the database is larger; 0 = no budget.
    max_db_bytes: int = 0


@dataclass(frozen=True)
class Config:
    source: Path | None
    state_dir: Path
    runtime_dir: Path
    socket: Path
    slots: int = 3
    socket_group: str | None = None
    stop_timeout: float = 10.0
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
    def lock_file(self) -> Path:
        return self.state_dir / "slotd.lock"

    @property
    def sessions_dir(self) -> Path:
        return self.runtime_dir / "sessions"

    @property
    def checkpoint_regex(self) -> re.Pattern[bytes] | None:
        if not self.checkpoint_pattern:
            return None
        return re.compile(self.checkpoint_pattern.encode())


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _non_negative_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _positive_number(value: Any) -> bool:
    return _non_negative_number(value) and value > 0


def _valid_regex(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        re.compile(value.encode())
    except re.error:
        return False
    return True


# key: (check, what was expected)
_TOP_KEYS = {
    "slots": (_positive_int, "a positive integer"),
    "state_dir": (lambda v: isinstance(v, str) and v != "", "a directory path (string)"),
    "runtime_dir": (lambda v: isinstance(v, str) and v != "", "a directory path (string)"),
    "socket": (lambda v: isinstance(v, str) and v != "", "a socket path (string)"),
    "socket_group": (lambda v: isinstance(v, str), "a group name (string)"),
    "stop_timeout": (_non_negative_number, "a number of seconds >= 0"),
    "checkpoint_pattern": (_valid_regex, "a regular expression (string)"),
    "flush_interval": (_positive_number, "a number of seconds > 0"),
    "batch_max_bytes": (_positive_int, "a positive integer (bytes)"),
    "max_chunk_bytes": (_positive_int, "a positive integer (bytes)"),
    "spool_segment_bytes": (_positive_int, "a positive integer (bytes)"),
    "spool_max_bytes": (_positive_int, "a positive integer (bytes)"),
    "on_shutdown": (lambda v: v in ("keep", "stop"), '"keep" or "stop"'),
    "log_level": (lambda v: v in ("debug", "info", "warning", "error"), '"debug", "info", "warning" or "error"'),
    "log_format": (lambda v: v in ("auto", "json", "console"), '"auto", "json" or "console"'),
}
_RETENTION_KEYS = {
    "max_session_bytes": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0 (bytes; 0 = no cap)"),
    "max_age_days": (_non_negative_number, "a number of days >= 0 (0 = keep forever)"),
    "max_db_bytes": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0 (bytes; 0 = no budget)"),
}
_PATH_KEYS = ("state_dir", "runtime_dir", "socket")


def find_config_file(explicit: str | os.PathLike | None, environ: Mapping[str, str]) -> Path | None:
    """The config file to read, by the search order: --config, $SLOTD_CONFIG, XDG, /etc."""
    if explicit:
        return Path(explicit)
    if environ.get("SLOTD_CONFIG"):
        return Path(environ["SLOTD_CONFIG"])
    xdg = environ.get("XDG_CONFIG_HOME") or (
        str(Path(environ["HOME"]) / ".config") if environ.get("HOME") else None
    )
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


def _check_table(table: Mapping[str, Any], keys: dict, where: str, prefix: str) -> None:
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
    if top.get("checkpoint_pattern") == "":
        top.pop("checkpoint_pattern")
    if top.get("max_chunk_bytes", 64 * KiB) > 16 * MiB:
        raise ConfigError(f"{where}: key 'max_chunk_bytes': expected at most 16 MiB, got {top['max_chunk_bytes']}")
    for key in ("stop_timeout", "flush_interval"):
        if key in top:
            top[key] = float(top[key])
    return Config(
        source=source,
        state_dir=state_dir,
        runtime_dir=runtime_dir,
        socket=socket,
        retention=Retention(**{k: v for k, v in retention_table.items()}),
        **top,
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
