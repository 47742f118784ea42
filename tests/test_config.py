"""Configuration loading: real files in tmp_path, explicit environments (never the host's)."""

from __future__ import annotations

import dataclasses
import grp
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.config import Config, ConfigError, Retention, find_config_file, load_config

EMBEDDED = Path(__file__).resolve().parent.parent / "config.toml"
ETC_CONFIG = Path("/etc/slotd/config.toml")

needs_no_etc_config = pytest.mark.skipif(
    ETC_CONFIG.exists(), reason=f"{ETC_CONFIG} exists on this machine and would be found before the defaults"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def test_embedded_config_resolves_its_directories_against_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repository's config.toml loads and keeps state and runtime directories beside itself, whatever the cwd."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(EMBEDDED, environ={})

    root = EMBEDDED.parent
    assert config.source == EMBEDDED
    assert config.state_dir == root / "state"
    assert config.runtime_dir == root / "state" / "run"
    assert config.socket == root / "state" / "run" / "slotd.sock"
    assert config.database == root / "state" / "slotd.db"
    assert config.sessions_dir == root / "state" / "run" / "sessions"
    assert config.slots == 3
    assert config.socket_group is None
    assert config.on_shutdown == "keep"
    regex = config.checkpoint_regex
    assert regex is not None
    assert regex.search(b"Overwrite files? Continue? [y/N] ")
    assert regex.search(b"[checkpoint] step 3 done")
    assert not regex.search(b"an ordinary line\n")


def test_embedded_config_values_are_the_builtin_defaults(home: Path) -> None:
    """Apart from directories and the example checkpoint pattern, config.toml states exactly the built-in defaults."""
    from_file = load_config(EMBEDDED, environ={"HOME": str(home)})
    builtin = Config(source=None, state_dir=Path("s"), runtime_dir=Path("r"), socket=Path("k"))

    skip = {"source", "state_dir", "runtime_dir", "socket", "checkpoint_pattern"}
    for field in dataclasses.fields(Config):
        if field.name not in skip:
            assert getattr(from_file, field.name) == getattr(builtin, field.name), field.name


def test_relative_config_path_from_a_checkout_keeps_state_in_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`slotd --config config.toml` run inside a checkout puts state and runtime directories in that checkout."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(EMBEDDED, checkout / "config.toml")
    monkeypatch.chdir(checkout)

    config = load_config("config.toml", environ={})

    assert config.state_dir == checkout / "state"
    assert config.runtime_dir == checkout / "state" / "run"


def test_paths_in_a_config_file_resolve_against_its_directory_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative paths resolve against the file's directory, absolute paths stay as written."""
    path = write(
        tmp_path / "conf" / "slotd.toml",
        f"state_dir = 'data'\nruntime_dir = '../run'\nsocket = '{tmp_path / 'sock' / 'slotd.sock'}'\n",
    )
    monkeypatch.chdir(tmp_path)

    config = load_config(path, environ={})

    assert config.state_dir.resolve() == tmp_path / "conf" / "data"
    assert config.runtime_dir.resolve() == tmp_path / "run"
    assert config.socket == tmp_path / "sock" / "slotd.sock"


@needs_no_etc_config
def test_no_config_file_gives_builtin_defaults_under_home(home: Path) -> None:
    """With no file anywhere, the built-in defaults apply, with state under ~/.local/state/slotd."""
    environ = {"HOME": str(home)}

    assert find_config_file(None, environ) is None
    config = load_config(None, environ=environ)

    assert config.source is None
    assert config.state_dir == home / ".local" / "state" / "slotd"
    assert config.runtime_dir == config.state_dir / "run"
    assert config.socket == config.runtime_dir / "slotd.sock"
    assert config.slots == 3
    assert config.stop_timeout == 10.0
    assert config.flush_interval == 0.05
    assert config.checkpoint_pattern is None and config.checkpoint_regex is None
    assert config.socket_group is None
    assert config.retention == Retention()


@needs_no_etc_config
def test_no_config_file_uses_xdg_state_and_runtime_directories(home: Path, tmp_path: Path) -> None:
    """Without systemd's directories the defaults follow $XDG_STATE_HOME and $XDG_RUNTIME_DIR."""
    environ = {"HOME": str(home), "XDG_STATE_HOME": str(tmp_path / "xs"), "XDG_RUNTIME_DIR": str(tmp_path / "xr")}

    config = load_config(None, environ=environ)

    assert config.state_dir == tmp_path / "xs" / "slotd"
    assert config.runtime_dir == tmp_path / "xr" / "slotd"
    assert config.socket == tmp_path / "xr" / "slotd" / "slotd.sock"


@pytest.fixture
def three_configs(tmp_path: Path, home: Path) -> tuple[Path, Path, Path, dict[str, str]]:
    """An explicit file, a $SLOTD_CONFIG file and an XDG file, each with its own slot count."""
    explicit = write(tmp_path / "explicit.toml", "slots = 1\n")
    from_env = write(tmp_path / "env.toml", "slots = 2\n")
    xdg = write(tmp_path / "xdg" / "slotd" / "config.toml", "slots = 4\n")
    environ = {"HOME": str(home), "SLOTD_CONFIG": str(from_env), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    return explicit, from_env, xdg, environ


def test_explicit_config_beats_slotd_config_and_xdg(three_configs: tuple[Path, Path, Path, dict[str, str]]) -> None:
    """--config is read even when $SLOTD_CONFIG and an XDG config file exist."""
    explicit, _, _, environ = three_configs

    assert find_config_file(explicit, environ) == explicit
    assert load_config(explicit, environ=environ).slots == 1


def test_slotd_config_beats_xdg_config(three_configs: tuple[Path, Path, Path, dict[str, str]]) -> None:
    """Without --config, $SLOTD_CONFIG is read even when an XDG config file exists."""
    _, from_env, _, environ = three_configs

    assert find_config_file(None, environ) == from_env
    assert load_config(None, environ=environ).slots == 2


def test_xdg_config_home_file_is_read_without_explicit_or_env(
    three_configs: tuple[Path, Path, Path, dict[str, str]],
) -> None:
    """Without --config or $SLOTD_CONFIG, $XDG_CONFIG_HOME/slotd/config.toml is read."""
    _, _, xdg, environ = three_configs
    del environ["SLOTD_CONFIG"]

    assert find_config_file(None, environ) == xdg
    config = load_config(None, environ=environ)
    assert config.slots == 4
    assert config.source == xdg


def test_dot_config_under_home_is_the_xdg_default(home: Path) -> None:
    """With $XDG_CONFIG_HOME unset, ~/.config/slotd/config.toml is read."""
    path = write(home / ".config" / "slotd" / "config.toml", "slots = 5\n")
    environ = {"HOME": str(home)}

    assert find_config_file(None, environ) == path
    assert load_config(None, environ=environ).slots == 5


def test_empty_slotd_config_is_ignored(three_configs: tuple[Path, Path, Path, dict[str, str]]) -> None:
    """An empty $SLOTD_CONFIG counts as unset and the search goes on to XDG."""
    _, _, xdg, environ = three_configs
    environ["SLOTD_CONFIG"] = ""

    assert find_config_file(None, environ) == xdg


@pytest.mark.parametrize("how", ["explicit", "SLOTD_CONFIG"])
def test_named_config_file_that_is_missing_is_an_error_not_a_fallback(tmp_path: Path, home: Path, how: str) -> None:
    """A config file named by --config or $SLOTD_CONFIG that does not exist is an error naming it, not a silent fallback."""
    missing = tmp_path / "nowhere" / "slotd.toml"
    write(home / ".config" / "slotd" / "config.toml", "slots = 5\n")
    environ = {"HOME": str(home)}
    if how == "SLOTD_CONFIG":
        environ["SLOTD_CONFIG"] = str(missing)

    with pytest.raises(ConfigError) as caught:
        load_config(missing if how == "explicit" else None, environ=environ)

    message = str(caught.value)
    assert str(missing) in message
    assert "cannot read" in message and "No such file" in message


def test_systemd_directories_are_used_when_no_file_sets_them(tmp_path: Path, home: Path) -> None:
    """$STATE_DIRECTORY and $RUNTIME_DIRECTORY win over XDG when a config file does not name directories."""
    path = write(tmp_path / "slotd.toml", "slots = 2\n")
    environ = {
        "HOME": str(home),
        "STATE_DIRECTORY": "/var/lib/slotd",
        "RUNTIME_DIRECTORY": "/run/slotd",
        "XDG_STATE_HOME": str(tmp_path / "xs"),
        "XDG_RUNTIME_DIR": str(tmp_path / "xr"),
    }

    config = load_config(path, environ=environ)

    assert config.state_dir == Path("/var/lib/slotd")
    assert config.runtime_dir == Path("/run/slotd")
    assert config.socket == Path("/run/slotd/slotd.sock")


def test_systemd_directory_lists_use_their_first_entry(home: Path) -> None:
    """A colon-separated $STATE_DIRECTORY / $RUNTIME_DIRECTORY (several directories in the unit) means the first one."""
    environ = {
        "HOME": str(home),
        "STATE_DIRECTORY": "/var/lib/slotd:/var/lib/other",
        "RUNTIME_DIRECTORY": "/run/slotd:/run/other:/run/third",
    }

    config = load_config(write(home / "c.toml", ""), environ=environ)

    assert config.state_dir == Path("/var/lib/slotd")
    assert config.runtime_dir == Path("/run/slotd")


def test_runtime_directory_defaults_under_systemd_state_directory(home: Path) -> None:
    """With only $STATE_DIRECTORY set, the runtime directory is <state_dir>/run."""
    environ = {"HOME": str(home), "STATE_DIRECTORY": "/var/lib/slotd"}

    config = load_config(write(home / "c.toml", ""), environ=environ)

    assert config.runtime_dir == Path("/var/lib/slotd/run")


def test_directories_in_the_file_beat_systemd_directories(tmp_path: Path, home: Path) -> None:
    """state_dir and runtime_dir set in the file are used even under systemd's directory variables."""
    path = write(tmp_path / "slotd.toml", "state_dir = 'st'\nruntime_dir = 'rt'\n")
    environ = {"HOME": str(home), "STATE_DIRECTORY": "/var/lib/slotd", "RUNTIME_DIRECTORY": "/run/slotd"}

    config = load_config(path, environ=environ)

    assert config.state_dir == tmp_path / "st"
    assert config.runtime_dir == tmp_path / "rt"


# (file contents, fragments the message must hold besides the file name)
BAD_CONFIGS = {
    "unknown-key": ("slot = 3\n", ["'slot'", "unknown key", "slots"]),
    "wrong-type-string-for-int": ('slots = "three"\n', ["'slots'", "an integer from 1 to 256", "'three'"]),
    "bool-is-not-an-int": ("slots = true\n", ["'slots'", "an integer from 1 to 256", "True"]),
    "zero-slots": ("slots = 0\n", ["'slots'", "an integer from 1 to 256", "got 0"]),
    "too-many-slots": ("slots = 257\n", ["'slots'", "an integer from 1 to 256", "257"]),
    "bad-regex": (
        "checkpoint_pattern = 'Continue\\? ['\n",
        ["'checkpoint_pattern'", "RE2 cannot compile", "missing ]"],
    ),
    "backreference": (
        "checkpoint_pattern = '(y|n)\\1'\n",
        ["'checkpoint_pattern'", "\\1", "a backreference is not supported"],
    ),
    "named-backreference": (
        "checkpoint_pattern = '(?P<a>y)(?P=a)'\n",
        ["'checkpoint_pattern'", "a named backreference"],
    ),
    "lookahead": (
        "checkpoint_pattern = 'Continue(?=\\?)'\n",
        ["'checkpoint_pattern'", "(?=", "lookahead is not supported"],
    ),
    "lookbehind": (
        "checkpoint_pattern = '(?<!no )Continue'\n",
        ["'checkpoint_pattern'", "(?<!", "lookbehind is not supported"],
    ),
    "possessive": ("checkpoint_pattern = 'a++'\n", ["'checkpoint_pattern'", "a possessive quantifier"]),
    "bad-choice": ('on_shutdown = "later"\n', ["'on_shutdown'", '"keep" or "stop"', "'later'"]),
    "negative-timeout": ("stop_timeout = -1\n", ["'stop_timeout'", "from 0 to 86400", "-1"]),
    "infinite-timeout": ("stop_timeout = inf\n", ["'stop_timeout'", "from 0 to 86400", "inf"]),
    "nan-timeout": ("stop_timeout = nan\n", ["'stop_timeout'", "from 0 to 86400", "nan"]),
    "negative-session-nice": ("session_nice = -5\n", ["'session_nice'", "an integer from 0 to 19", "-5"]),
    "session-nice-too-high": ("session_nice = 20\n", ["'session_nice'", "an integer from 0 to 19", "20"]),
    "fractional-session-nice": ("session_nice = 2.5\n", ["'session_nice'", "an integer from 0 to 19", "2.5"]),
    "huge-flush-interval": ("flush_interval = 1e9\n", ["'flush_interval'", "from 0.001 to 10", "1000000000.0"]),
    "zero-flush-interval": ("flush_interval = 0\n", ["'flush_interval'", "from 0.001 to 10"]),
    "chunk-too-large": ("max_chunk_bytes = 33554432\n", ["'max_chunk_bytes'", "to 16777216 (16 MiB)"]),
    "tiny-batch": ("batch_max_bytes = 10\n", ["'batch_max_bytes'", "from 1024 (1 KiB) to 1073741824 (1 GiB)"]),
    "tiny-segment": ("spool_segment_bytes = 1\n", ["'spool_segment_bytes'", "from 65536 (64 KiB)"]),
    "huge-spool": ("spool_max_bytes = 9223372036854775807\n", ["'spool_max_bytes'", "to 1099511627776 (1 TiB)"]),
    "unknown-group": (
        "socket_group = 'no-such-group-slotd'\n",
        ["'socket_group'", "no group named 'no-such-group-slotd'"],
    ),
    "unknown-retention-key": ("[retention]\nmax_age = 3\n", ["'retention.max_age'", "unknown key", "max_age_days"]),
    "wrong-retention-type": (
        '[retention]\nmax_age_days = "never"\n',
        ["'retention.max_age_days'", "a number of days", "'never'"],
    ),
    "age-beyond-a-century": (
        "[retention]\nmax_age_days = 1e7\n",
        ["'retention.max_age_days'", "from 0 to 36500", "10000000.0"],
    ),
    "infinite-age": ("[retention]\nmax_age_days = inf\n", ["'retention.max_age_days'", "from 0 to 36500", "inf"]),
    "huge-session-cap": (
        "[retention]\nmax_session_bytes = 9223372036854775807\n",
        ["'retention.max_session_bytes'", "1 TiB"],
    ),
    "negative-db-budget": ("[retention]\nmax_db_bytes = -1\n", ["'retention.max_db_bytes'", "from 0 to", "1 PiB"]),
    "retention-not-a-table": ("retention = 5\n", ["'retention'", "a table"]),
    "invalid-toml": ("slots = 3\nstate_dir = \n", ["not valid TOML", "line 2"]),
    "duplicate-key": ("slots = 3\nslots = 4\n", ["not valid TOML", "line 2"]),
}


@pytest.mark.parametrize("contents, fragments", list(BAD_CONFIGS.values()), ids=list(BAD_CONFIGS))
def test_bad_config_raises_config_error_naming_file_key_and_expectation(
    tmp_path: Path, home: Path, contents: str, fragments: list[str]
) -> None:
    """A bad key or value raises ConfigError whose message names the file, the key and what was expected."""
    path = write(tmp_path / "bad.toml", contents)

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"HOME": str(home)})

    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message


def test_config_that_is_not_utf8_raises_config_error(tmp_path: Path, home: Path) -> None:
    """A config file that is not UTF-8 is reported as not valid TOML, naming the file."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"socket_group = '\xe9quipe'\n")

    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_config(path, environ={"HOME": str(home)})
    assert str(path) in str(caught.value)


def test_config_path_that_is_a_directory_raises_config_error(tmp_path: Path, home: Path) -> None:
    """A config path that cannot be read as a file raises ConfigError naming the path and the reason."""
    path = tmp_path / "a-directory.toml"
    path.mkdir()

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"HOME": str(home)})
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot read")
    assert "Is a directory" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_config_file_raises_config_error(tmp_path: Path, home: Path) -> None:
    """A config file without read permission raises ConfigError naming the file and the reason."""
    path = write(tmp_path / "secret.toml", "slots = 2\n")
    path.chmod(0)

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"HOME": str(home)})
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot read")
    assert "Permission denied" in message


def test_valid_values_are_read_with_their_types(tmp_path: Path, home: Path) -> None:
    """Every key of a valid file is read, integers where seconds are expected become floats, and empty strings mean unset."""
    path = write(
        tmp_path / "full.toml",
        "slots = 5\nstop_timeout = 2\nflush_interval = 1\nsocket_group = ''\ncheckpoint_pattern = ''\n"
        "on_shutdown = 'stop'\nlog_level = 'debug'\nlog_format = 'json'\nmax_chunk_bytes = 1024\n"
        "[retention]\nmax_session_bytes = 0\nmax_age_days = 0.5\nmax_db_bytes = 1000000\n",
    )

    config = load_config(path, environ={"HOME": str(home)})

    assert config.slots == 5
    assert config.stop_timeout == 2.0 and isinstance(config.stop_timeout, float)
    assert config.flush_interval == 1.0 and isinstance(config.flush_interval, float)
    assert config.socket_group is None
    assert config.checkpoint_pattern is None and config.checkpoint_regex is None
    assert (config.on_shutdown, config.log_level, config.log_format) == ("stop", "debug", "json")
    assert config.max_chunk_bytes == 1024
    assert config.retention == Retention(max_session_bytes=0, max_age_days=0.5, max_db_bytes=1_000_000)


def test_every_numeric_key_accepts_both_ends_of_its_range(tmp_path: Path, home: Path) -> None:
    """The smallest and largest value of each documented range load, and an existing group is accepted."""
    group = grp.getgrgid(os.getgid()).gr_name
    lowest = write(
        tmp_path / "low.toml",
        f"slots = 1\nstop_timeout = 0\nflush_interval = 0.001\nbatch_max_bytes = 1024\nmax_chunk_bytes = 1024\n"
        f"spool_segment_bytes = 65536\nspool_max_bytes = 1048576\nsocket_group = '{group}'\n"
        "[retention]\nmax_session_bytes = 0\nmax_age_days = 0\nmax_db_bytes = 0\n",
    )
    highest = write(
        tmp_path / "high.toml",
        "slots = 256\nstop_timeout = 86400\nflush_interval = 10\nbatch_max_bytes = 1073741824\n"
        "max_chunk_bytes = 16777216\nspool_segment_bytes = 1073741824\nspool_max_bytes = 1099511627776\n"
        "[retention]\nmax_session_bytes = 1099511627776\nmax_age_days = 36500\nmax_db_bytes = 1125899906842624\n",
    )

    low = load_config(lowest, environ={"HOME": str(home)})
    high = load_config(highest, environ={"HOME": str(home)})

    assert (low.slots, low.flush_interval, low.socket_group, low.retention.max_age_days) == (1, 0.001, group, 0)
    assert (high.slots, high.stop_timeout, high.retention.max_age_days) == (256, 86400.0, 36500)


def test_a_small_spool_max_bytes_shrinks_the_default_segment_to_half_of_it(tmp_path: Path, home: Path) -> None:
    """With only spool_max_bytes set below twice the default segment size, segments become half of it, so two fit."""
    path = write(tmp_path / "small.toml", "spool_max_bytes = 4194304\n")

    config = load_config(path, environ={"HOME": str(home)})

    assert config.spool_segment_bytes == 2 * 1024 * 1024
    assert config.spool_max_bytes // config.spool_segment_bytes == 2


def test_checkpoint_pattern_matches_output_bytes_that_are_not_utf8(tmp_path: Path, home: Path) -> None:
    """The checkpoint pattern matches raw output bytes: invalid UTF-8 around or inside a match, `.` as any byte, non-ASCII pattern text as its UTF-8 bytes."""
    path = write(tmp_path / "c.toml", "checkpoint_pattern = 'Continue\\? \\[y/N\\]|x.y|Überschreiben\\?'\n")

    regex = load_config(path, environ={"HOME": str(home)}).checkpoint_regex

    assert regex is not None
    assert regex.search(b"\xff\xfe\xc3(Continue? [y/N] \x80")
    assert regex.search(b"\xc3x\xffy\xc3")
    assert regex.search("Datei Überschreiben?".encode())
    assert not regex.search("Datei Überschreiben?".encode("latin-1"))
    assert not regex.search(b"\xff" * 4096)


BAD_AT_START = {
    "unknown-group": ("socket_group = 'no-such-group-slotd'\n", ["'socket_group'", "no group named"]),
    "age-beyond-a-century": ("[retention]\nmax_age_days = 1e7\n", ["'retention.max_age_days'", "from 0 to 36500"]),
    "infinite-age": ("[retention]\nmax_age_days = inf\n", ["'retention.max_age_days'", "from 0 to 36500"]),
    "infinite-stop-timeout": ("stop_timeout = inf\n", ["'stop_timeout'", "from 0 to 86400"]),
    "huge-flush-interval": ("flush_interval = 1e9\n", ["'flush_interval'", "from 0.001 to 10"]),
    "backreference": (
        "checkpoint_pattern = '(y|n)\\1'\n",
        ["'checkpoint_pattern'", "a backreference is not supported"],
    ),
    "segment-larger-than-half-the-spool": (
        "spool_segment_bytes = 8388608\nspool_max_bytes = 4194304\n",
        ["'spool_segment_bytes' (8388608)", "half of 'spool_max_bytes' (4194304)"],
    ),
    "chunk-larger-than-half-a-segment": (
        "spool_segment_bytes = 65536\nmax_chunk_bytes = 65536\n",
        ["'max_chunk_bytes' (65536)", "half of the spool segment size (65536"],
    ),
}


@pytest.mark.parametrize("contents, fragments", list(BAD_AT_START.values()), ids=list(BAD_AT_START))
def test_daemon_refuses_a_config_that_would_fail_later_with_exit_78(
    tmp_path: Path, contents: str, fragments: list[str]
) -> None:
    """slotd exits 78 at once, without a traceback, on a value that would only fail after start, naming file, key and range."""
    path = write(tmp_path / "slotd.toml", f"state_dir = 'state'\nruntime_dir = 'run'\n{contents}")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "daemon", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        _out, err = daemon.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        daemon.kill()
        _out, err = daemon.communicate()
        pytest.fail(f"slotd accepted the configuration and ran: {err.decode()[-2000:]}")

    message = err.decode()
    assert daemon.returncode == 78, message
    assert "Traceback" not in message
    assert message.startswith(f"slotd: configuration error: {path}: ")
    for fragment in fragments:
        assert fragment in message


def test_embedded_config_names_every_key() -> None:
    """config.toml names every configuration key (set, or in a comment when it has no fixed default), each in its table."""
    text = EMBEDDED.read_text()
    top, _, retention = text.partition("\n[retention]\n")

    def named(section: str) -> set[str]:
        return set(re.findall(r"^(?:# )?([a-z_]+) = ", section, re.M))

    assert named(top) == {field.name for field in dataclasses.fields(Config)} - {"source", "retention"}
    assert named(retention) == {field.name for field in dataclasses.fields(Retention)}
