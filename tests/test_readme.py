"""The README's two commands: CI runs the test command verbatim."""

from __future__ import annotations

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The command lines of the README's "The two commands" block."""
    text = (CHECKOUT / "README.md").read_text()
    section = text[text.index("## The two commands") :]
    block = section[section.index("```sh\n") + len("```sh\n") : section.index("\n```", section.index("```sh\n"))]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    """.ci/run's command is the README's second command, character for character, and it runs the lint, type and test steps."""
    install_and_run, install_and_test = readme_commands()
    ci_lines = [line for line in (CHECKOUT / ".ci" / "run").read_text().splitlines() if line.startswith("python3 ")]
    assert ci_lines == [install_and_test]
    for step in (
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/mypy",
        ".venv/bin/python -m pytest",
    ):
        assert step in install_and_test
    assert install_and_run.endswith(".venv/bin/slotd --config config.toml")
