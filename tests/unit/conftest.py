"""Unit tests: pure code and servicers over in-memory fakes; nothing here starts a server.

Every fixture of tests/conftest.py that starts something (PostgreSQL, Valkey, the server,
Envoy, Spark, `processes`) is refused here, and a unit test that leaves a child process
behind fails: `pytest tests/unit` must stay a loop of seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Fixtures of tests/conftest.py (and those built on them) that start servers or Spark.
SERVER_FIXTURES = frozenset(
    {
        "postgres",
        "postgres_dsn",
        "valkey",
        "redis_url",
        "server",
        "envoy",
        "grpc_target",
        "client",
        "rest",
        "processes",
        "empty_registry",
        "empty_online",
        "spark",
        "postgres_sources",
    }
)


def children() -> set[int]:
    """The ids of this process's child processes (from /proc: no dependency)."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:  # the field after the state: the parent's id
            found.add(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def no_servers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a unit test that asks for a server fixture, or that starts a process."""
    asked = sorted(SERVER_FIXTURES.intersection(request.fixturenames))
    if asked:
        pytest.fail(f"unit tests start no servers; {request.node.nodeid} asks for {', '.join(asked)}", pytrace=False)
    before = children()
    yield
    started = children() - before
    assert not started, f"a unit test left child processes running: {sorted(started)}"
