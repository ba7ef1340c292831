"""Session fixtures: real PostgreSQL, the server and Envoy on ephemeral loopback ports."""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")  # before gRPC initializes: see jobs/__init__.py
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from devstack import Proc, free_port, start_envoy, start_postgres, start_server, start_valkey
from featurestore import FeatureStoreClient
from tests._http import Rest

# DELETE, not TRUNCATE: TRUNCATE's exclusive locks deadlock with the server's snapshot reads.
CLEAR_REGISTRY = (
    "DELETE FROM registry_group_members; DELETE FROM registry_feature_groups; "
    "DELETE FROM registry_features; DELETE FROM registry_revisions"
)


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def postgres(stack_dir: Path) -> Iterator[Proc]:
    proc = start_postgres(stack_dir / "postgres", free_port(), durable=False)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def postgres_dsn(postgres: Proc) -> str:
    return str(postgres.extra["dsn"])


@pytest.fixture(scope="session")
def valkey(stack_dir: Path) -> Iterator[Proc]:
    proc = start_valkey(stack_dir / "valkey", free_port(), durable=False)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def redis_url(valkey: Proc) -> str:
    return str(valkey.extra["url"])


FAST_SERVER_ARGS = ["--health-interval", "0.2", "--registry-refresh-interval", "0.1"]


@pytest.fixture(scope="session")
def server(stack_dir: Path, postgres_dsn: str, redis_url: str) -> Iterator[Proc]:
    proc = start_server(stack_dir, free_port(), postgres_dsn, redis_url, FAST_SERVER_ARGS)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def envoy(stack_dir: Path, server: Proc) -> Iterator[Proc]:
    proc = start_envoy(stack_dir, free_port(), server.port)
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


def run_sql(dsn: str, sql: str) -> list[asyncpg.Record]:
    """Run one statement on a fresh connection and return its rows."""

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
def spark(warehouse: Path, postgres: Proc) -> Iterator[Any]:
    """One local Spark for the session, with the test PostgreSQL's database `sources` as the JDBC catalog
    `postgres` (the feature store's own database is never a source)."""
    from jobs import SessionConfig, build_session

    run_sql(str(postgres.extra["dsn"]), "CREATE DATABASE sources")
    config = SessionConfig(
        master="local[2]",
        warehouse=str(warehouse),
        jdbc_url=f"jdbc:postgresql://127.0.0.1:{postgres.port}/sources?user=postgres",
        shuffle_partitions=2,
        conf={"spark.ui.enabled": "false", "spark.driver.port": str(free_port())},
    )
    session = build_session(config, "featurestore-tests")
    yield session
    session.stop()
