"""Unit tests: pure code and servicers over in-memory fakes; nothing here starts a server.

Every fixture of tests/conftest.py that starts something (PostgreSQL, Valkey, the server,
Envoy, Spark, `processes`) is refused here, and a unit test that leaves a child process
behind fails: `pytest tests/unit` must stay a loop of seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._helpers import children

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


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a unit test that asks for a server fixture, before any fixture is set up."""
    asked = sorted(SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    if asked:
        pytest.fail(f"unit tests start no servers; {item.nodeid} asks for {', '.join(asked)}", pytrace=False)


@pytest.fixture(autouse=True, scope="module")
def no_processes_left() -> Iterator[None]:
    """Fail a module whose tests leave a process running (e.g. a server fixture got by name).

    Checked per module, not per test: scanning /proc costs milliseconds, a unit test less.
    """
    before = children()
    yield
    started = children() - before
    assert not started, f"unit tests left child processes running: {sorted(started)}"
