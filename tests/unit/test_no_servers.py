"""The unit tests' guard knows every fixture of tests/conftest.py that starts something."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from tests._helpers import children, reaped
from tests.unit.conftest import SERVER_FIXTURES

# Fixtures of tests/conftest.py that start nothing (directories, the end-of-run log check).
HARMLESS = {"stack_dir", "warehouse", "no_secret_in_any_log"}


def fixtures_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any("fixture" in ast.unparse(decorator) for decorator in node.decorator_list)
    }


def test_every_server_fixture_is_refused_here() -> None:
    fixtures = fixtures_of(Path(__file__).resolve().parent.parent / "conftest.py")
    assert fixtures - HARMLESS == SERVER_FIXTURES


def test_a_start_that_fails_leaves_nothing_running() -> None:
    spawned: list[subprocess.Popen[bytes]] = []

    def start() -> None:  # as devstack's start_* do: spawn in a session of its own, then wait in vain
        spawned.append(subprocess.Popen(["sleep", "60"], start_new_session=True))
        raise TimeoutError("never ready")

    with pytest.raises(TimeoutError):
        reaped(start)
    assert not Path(f"/proc/{spawned[0].pid}").exists()
    assert spawned[0].pid not in children()
