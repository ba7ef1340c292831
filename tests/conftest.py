"""Fixtures: real PostgreSQL, Valkey, the server, Envoy and Spark on ephemeral loopback ports.

Session fixtures start each server once, on first use (a start that fails kills what it
spawned). Tests that start servers of their own use `processes`, which stops every one it
started. Helpers (run_sql, eventually, ...) live in tests/_helpers.py; tests/unit/ uses none
of the servers here (its conftest makes sure). See docs/testing.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")  # before gRPC initializes: see jobs/__init__.py
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from devstack import Proc, RateLimit, free_port, start_envoy, start_postgres, start_server, start_valkey
from featurestore import FeatureStoreClient
from tests._helpers import CLEAR_REGISTRY, FAST_SERVER_ARGS, SECRETS, Processes, reaped, run_sql, secret_leaks
from tests._http import Rest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the last test (every server stopped): no log of the run holds a token or key a test handed out."""
    yield
    leaks = secret_leaks(tmp_path_factory.getbasetemp(), SECRETS)
    assert not leaks, f"secrets in logs: {leaks}"


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def postgres(stack_dir: Path) -> Iterator[Proc]:
    proc = reaped(lambda: start_postgres(stack_dir / "postgres", free_port(), durable=False))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def postgres_dsn(postgres: Proc) -> str:
    return str(postgres.extra["dsn"])


@pytest.fixture(scope="session")
def valkey(stack_dir: Path) -> Iterator[Proc]:
    proc = reaped(lambda: start_valkey(stack_dir / "valkey", free_port(), durable=False))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def redis_url(valkey: Proc) -> str:
    return str(valkey.extra["url"])


@pytest.fixture(scope="session")
def server(stack_dir: Path, postgres_dsn: str, redis_url: str) -> Iterator[Proc]:
    proc = reaped(lambda: start_server(stack_dir, free_port(), postgres_dsn, redis_url, FAST_SERVER_ARGS))
    yield proc
    proc.stop()


# The session's Envoy: gateway/envoy.yaml with rate limits no test reaches (fuzzing sends
# bursts from one address); tests/test_rate_limit.py tests the limits on Envoys of its own.
UNLIMITED = RateLimit(route=10**9, client=10**9)


@pytest.fixture(scope="session")
def envoy(stack_dir: Path, server: Proc) -> Iterator[Proc]:
    proc = reaped(lambda: start_envoy(stack_dir, free_port(), server.port, rate_limit=UNLIMITED))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def grpc_target(server: Proc) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="session")
def client(grpc_target: str) -> Iterator[FeatureStoreClient]:
    with FeatureStoreClient(grpc_target) as c:
        grpc.channel_ready_future(c.channel).result(timeout=10)
        yield c


@pytest.fixture(scope="session")
def rest(envoy: Proc) -> Rest:
    return Rest(f"http://127.0.0.1:{envoy.port}")


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Servers of this test's own (PostgreSQL, Valkey, a cluster, the server), all stopped at teardown.

    Start them through it (`processes.postgres()`, `processes.server(dsn, url)`, ...) or hand it
    what was started elsewhere (`processes.add(proc)`): a start that fails, or a failing
    assertion, still stops every server started before it, the last started first.
    """
    with Processes(tmp_path) as procs:
        yield procs


@pytest.fixture
def empty_registry(postgres_dsn: str, server: Proc) -> None:
    """Every test that uses it starts from an empty registry."""
    run_sql(postgres_dsn, CLEAR_REGISTRY)


@pytest.fixture
def empty_online(redis_url: str) -> None:
    """Every test that uses it starts from an empty online store."""
    import redis

    with redis.Redis.from_url(redis_url) as r:
        r.flushall()


@pytest.fixture(scope="session")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("warehouse")


@pytest.fixture(scope="session")
def spark(warehouse: Path) -> Iterator[SparkSession]:
    """One local Spark for the session, over the Parquet `warehouse`; it needs no PostgreSQL."""
    from jobs import SessionConfig, build_session

    config = SessionConfig(
        master="local[2]",
        warehouse=str(warehouse),
        shuffle_partitions=2,
        conf={"spark.ui.enabled": "false", "spark.driver.port": str(free_port())},
    )
    session = build_session(config, "featurestore-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def postgres_sources(spark: SparkSession, postgres: Proc) -> str:
    """The test PostgreSQL's database `sources`, made `spark`'s JDBC catalog `postgres`; its DSN.

    Only the tests that read PostgreSQL sources through Spark ask for this (the feature
    store's own database is never a source); `spark` alone starts no PostgreSQL.
    """
    run_sql(str(postgres.extra["dsn"]), "CREATE DATABASE sources")
    prefix = "spark.sql.catalog.postgres"
    spark.conf.set(prefix, "org.apache.spark.sql.execution.datasources.v2.jdbc.JDBCTableCatalog")
    spark.conf.set(f"{prefix}.url", f"jdbc:postgresql://127.0.0.1:{postgres.port}/sources?user=postgres")
    spark.conf.set(f"{prefix}.driver", "org.postgresql.Driver")
    return f"postgresql://postgres@127.0.0.1:{postgres.port}/sources"
