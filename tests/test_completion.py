"""Shell completion: the script `slotctl completion SHELL` prints, sourced into a real
bash, completes commands, options and the running daemon's session ids."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import DaemonHandle
from tests.helpers import NEEDS_TMUX, Tmux

# The slotctl the completion script runs, found by name as in a person's shell.
BIN = Path(sys.executable).parent


def completions(daemon: DaemonHandle, *words: str) -> list[str]:
    """What bash offers for the last of words, with slotctl's completion sourced."""
    script = (
        'eval "$(slotctl completion bash)"\n'
        'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}\n'
        '_python_argcomplete slotctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "SLOTD_SOCKET": str(daemon.socket)}
    result = subprocess.run(["bash", "-c", script, "bash", *words], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def test_bash_completes_commands_options_and_session_ids(daemon: DaemonHandle) -> None:
    """Sourced into bash, the script completes a command, an option, and a session id prefix from the daemon."""
    session_id = daemon.start_session(["sleep", "600"])["id"]
    assert completions(daemon, "slotctl", "sh") == ["show", "shutdown"]
    assert "--timestamps" in completions(daemon, "slotctl", "logs", "--time")
    assert completions(daemon, "slotctl", "show", session_id[:3]) == [session_id[:8]]
    assert session_id[:8] in completions(daemon, "slotctl", "stop", session_id[:8], "")


def test_completion_needs_no_daemon_and_knows_zsh_and_fish(tmp_path: Path) -> None:
    """`slotctl completion` prints each shell's code with no daemon running; a completion asked of a missing daemon offers nothing, silently."""
    for shell, mark in (("bash", "complete "), ("zsh", "#compdef slotctl"), ("fish", "complete ")):
        result = subprocess.run(
            [sys.executable, "-m", "supervisor", "--socket", str(tmp_path / "none.sock"), "completion", shell],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0 and mark in result.stdout and "slotctl" in result.stdout, result.stderr
    gone = DaemonHandle(tmp_path, {})
    assert completions(gone, "slotctl", "show", "ab") == []


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_the_zsh_and_fish_scripts_are_valid_code_for_their_shells(shell: str) -> None:
    """The zsh and fish scripts parse in their shells (where installed: the test says so otherwise)."""
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed: apt-get install {shell}")
    code = subprocess.run(
        [sys.executable, "-m", "supervisor", "completion", shell], capture_output=True, text=True, timeout=60
    ).stdout
    checked = subprocess.run([shell, "-n"], input=code, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr


@NEEDS_TMUX
def test_tab_completes_a_session_id_in_an_interactive_bash(
    daemon: DaemonHandle, terminal: Tmux, tmp_path: Path
) -> None:
    """A person who sourced the script types `slotctl show` and the start of an id, presses Tab, and gets the id."""
    session_id = daemon.start_session(["sleep", "600"])["id"]
    rcfile = tmp_path / "bashrc"
    rcfile.write_text(
        f"PS1='$ '\nexport PATH={BIN}:$PATH SLOTD_SOCKET={daemon.socket}\neval \"$(slotctl completion bash)\"\n"
    )
    terminal.start(["bash", "--noprofile", "--rcfile", str(rcfile), "-i"])
    terminal.wait_for("$")
    terminal.type(f"slotctl show {session_id[:3]}")
    terminal.keys("Tab")
    terminal.wait_for(f"slotctl show {session_id[:8]}")
