"""The test suite's own layout: shared helpers live in helpers.py and harness.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports by name (relative imports as written, dots included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_*.py")), ids=lambda path: path.name)
def test_a_test_file_takes_shared_helpers_from_helpers_or_harness_only(path):
    """No test file imports from another test file or from conftest.py: what they share is in helpers.py or harness.py."""
    own = f"tests.{path.stem}"
    wrong = sorted(
        name
        for name in imported_modules(path)
        if name != own and (name.startswith(("tests.test_", "test_", ".")) or name.split(".")[-1] == "conftest")
    )
    assert not wrong, f"{path.name} imports {', '.join(wrong)}: move what it needs to tests/helpers.py"


def test_the_harness_does_not_need_pytest():
    """tests/harness.py imports without pytest (nor anything that needs it), so bench/ can start its daemons with it."""
    blocked = "import sys; sys.modules['pytest'] = None; import tests.harness"
    result = subprocess.run(
        [sys.executable, "-c", blocked], cwd=TESTS.parent, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", sorted(path.name for path in (TESTS.parent / "bench").glob("*.py")))
def test_every_benchmark_starts(script):
    """Each bench/*.py imports what it needs and answers --help: a benchmark broken by a change elsewhere is found in CI, not on the next run."""
    result = subprocess.run(
        [sys.executable, f"bench/{script}", "--help"], cwd=TESTS.parent, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
