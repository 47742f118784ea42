"""A session's environment: slotctl's own, as a shell passes it on (not the daemon's),
shaped with -e, -u and --env-clear, and kept from showing its values by default."""

from __future__ import annotations

import os

import pytest

from tests.harness import DaemonHandle
from tests.helpers import notify_receiver

# Prints the command's environment, NUL-separated (not through Python, which adds
# LC_CTYPE to its own when the locale is C).
PRINT_ENV = ["env", "-0"]


@pytest.fixture
def daemon_with_its_own_env(make_daemon) -> DaemonHandle:
    daemon = make_daemon(start=False)
    daemon.start(env={**os.environ, "DAEMONS_OWN": "daemon"})
    return daemon


def env_of(result) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return parse_env(result.stdout)


def parse_env(output: bytes) -> dict[str, str]:
    return dict(entry.decode().split("=", 1) for entry in output.split(b"\0") if entry.strip(b"\r\n"))


def test_slotctl_gives_a_session_its_own_environment_not_the_daemons(daemon_with_its_own_env, monkeypatch) -> None:
    """`slotctl run` passes its own environment, with -e set and -u left out; nothing of the daemon's comes through."""
    monkeypatch.setenv("CLIENTS_OWN", "client")
    monkeypatch.setenv("LEFT_OUT", "x")
    env = env_of(daemon_with_its_own_env.cli("run", "-e", "ADDED=1", "-u", "LEFT_OUT", "--", *PRINT_ENV))
    assert (env["CLIENTS_OWN"], env["ADDED"]) == ("client", "1")
    assert "LEFT_OUT" not in env and "DAEMONS_OWN" not in env
    assert env["PATH"] == os.environ["PATH"] and env["SLOTD_SLOT"] == "1" and "SLOTD_SESSION_ID" in env


def test_env_clear_starts_from_nothing_but_what_e_gives(daemon_with_its_own_env) -> None:
    """--env-clear: the command has only the -e variables and slotd's own two."""
    env = env_of(daemon_with_its_own_env.cli("run", "--env-clear", "-e", "ONLY=this", "--", *PRINT_ENV))
    assert set(env) == {"ONLY", "SLOTD_SESSION_ID", "SLOTD_SLOT"}


def test_a_client_that_sends_no_environment_gets_the_daemons_with_its_env_on_top(daemon_with_its_own_env) -> None:
    """A protocol client that leaves inherit_env out gets the daemon's environment with its env added, as before."""
    daemon = daemon_with_its_own_env
    session = daemon.start_session(PRINT_ENV, env={"ADDED": "1"})
    daemon.wait_ended(session["id"])
    env = parse_env(daemon.stdout_bytes(session["id"]))
    assert (env["DAEMONS_OWN"], env["ADDED"]) == ("daemon", "1")
    assert daemon.session(session["id"])["inherit_env"] is True


def test_what_systemd_gave_the_daemon_does_not_reach_a_command(make_daemon, monkeypatch, tmp_path) -> None:
    """NOTIFY_SOCKET and the watchdog's variables, the daemon's alone, are left out of a command's environment even when it inherits the daemon's."""
    daemon = make_daemon(start=False)
    with notify_receiver(monkeypatch, tmp_path / "notify.sock"):
        daemon.start(env={**os.environ, "WATCHDOG_USEC": "1000000"})
        session = daemon.start_session(PRINT_ENV)
        daemon.wait_ended(session["id"])
    env = parse_env(daemon.stdout_bytes(session["id"]))
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env


def test_a_tty_session_gets_a_term_of_its_own_not_slotctls(daemon: DaemonHandle, monkeypatch) -> None:
    """slotctl's TERM, COLUMNS and LINES describe its own terminal: a tty session gets xterm-256color and its size from the terminal; -e TERM still wins."""
    monkeypatch.setenv("TERM", "dumb")
    monkeypatch.setenv("COLUMNS", "33")
    env = env_of(daemon.cli("run", "--tty", "--", *PRINT_ENV))
    assert env["TERM"] == "xterm-256color" and "COLUMNS" not in env
    assert env_of(daemon.cli("run", "--tty", "-e", "TERM=vt100", "--", *PRINT_ENV))["TERM"] == "vt100"
    assert env_of(daemon.cli("run", "--", *PRINT_ENV))["TERM"] == "dumb"


def test_show_names_the_environment_and_shows_values_only_when_asked(daemon: DaemonHandle) -> None:
    """`show` lists the environment's names, not a secret's value; `show --env` prints the values."""
    result = daemon.cli("start", "-q", "--env-clear", "-e", "API_TOKEN=s3cret", "--", "true")
    session_id = result.stdout.decode().strip()
    shown = daemon.cli("show", session_id).stdout.decode()
    assert "API_TOKEN" in shown and "s3cret" not in shown
    assert '"API_TOKEN": "s3cret"' in daemon.cli("show", "--env", session_id).stdout.decode()
