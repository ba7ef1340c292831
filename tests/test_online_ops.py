"""The online store under faults and at scale: Redis outages, Redis Cluster, several workers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from devstack import Proc, free_port, start_postgres, start_server, start_valkey, start_valkey_cluster
from featurestore import FeatureStoreClient, error_details
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from tests._online import get, i64, now, register, row, wait_servable, write
from tests.conftest import FAST_SERVER_ARGS
from tests.test_operations import eventually, health_status

STORE = "featurestore.serving.v1.FeatureStoreService"


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[str]:
    postgres = start_postgres(tmp_path / "postgres", free_port(), durable=False)
    yield str(postgres.extra["dsn"])
    postgres.stop()


def test_redis_outage_gives_unavailable_fast_and_recovers(tmp_path: Path, own_postgres: str) -> None:
    valkey = start_valkey(tmp_path / "valkey", free_port())  # durable: its data must survive the restart
    server = start_server(tmp_path, free_port(), own_postgres, str(valkey.extra["url"]), FAST_SERVER_ARGS)
    target = f"127.0.0.1:{server.port}"
    try:
        with FeatureStoreClient(target) as client:
            register(client, "x", pb.INT64)
            wait_servable(client, "customer", "x")
            write(client, [row("c1", now(), x=i64(7))])
            valkey.stop()
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                get(client, "c1", "x")
            assert time.monotonic() - started < 2
            details = error_details(info.value)
            assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "REDIS_UNAVAILABLE")
            with pytest.raises(grpc.RpcError) as info:
                write(client, [row("c1", now(), x=i64(8))])
            assert error_details(info.value).code == grpc.StatusCode.UNAVAILABLE
            eventually(lambda: health_status(target, STORE) == health_pb2.HealthCheckResponse.NOT_SERVING)
            assert (
                health_status(target, "featurestore.registry.v1.RegistryService")
                == health_pb2.HealthCheckResponse.SERVING
            )
            assert server.running()

            valkey = start_valkey(tmp_path / "valkey", valkey.port)
            eventually(lambda: health_status(target, STORE) == health_pb2.HealthCheckResponse.SERVING)
            assert get(client, "c1", "x")["x"].value.int64_value == 7
    finally:
        server.stop()
        valkey.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Proc]]:
    nodes = start_valkey_cluster(tmp_path / "cluster")
    yield nodes
    for node in nodes:
        node.stop()


def test_redis_cluster_reads_and_writes_across_slots(tmp_path: Path, own_postgres: str, cluster: list[Proc]) -> None:
    seed = f"redis://127.0.0.1:{cluster[0].port}/0"
    server = start_server(tmp_path, free_port(), own_postgres, seed, [*FAST_SERVER_ARGS, "--redis-cluster", "true"])
    try:
        with FeatureStoreClient(f"127.0.0.1:{server.port}") as client:
            register(client, "x", pb.INT64)
            register(client, "y", pb.INT64)
            wait_servable(client, "customer", "x", "y")
            rows = [row(f"e{i}", now(), x=i64(i), y=i64(-i)) for i in range(300)]
            assert write(client, rows).written_values == 600
            older = [row(f"e{i}", now().replace(year=2000), x=i64(0)) for i in range(300)]
            assert write(client, older).skipped_values == 300
            ids = [f"e{i}" for i in range(300)] + ["missing"]
            response = client.store.BatchGetFeatures(
                fs.BatchGetFeaturesRequest(entity_type="customer", entity_ids=ids, feature_names=["y", "x"])
            )
            assert [e.entity_id for e in response.entities] == ids
            values = [[f.value.int64_value for f in e.features] for e in response.entities[:300]]
            assert values == [[-i, i] for i in range(300)]
            assert response.entities[300].features[0].status == fs.NOT_FOUND
            assert get(client, "e42", "x")["x"].value.int64_value == 42
        used = [int(_keys(node)) for node in cluster]
        assert all(n > 50 for n in used), used  # the entities really are spread over the nodes
    finally:
        server.stop()


def _keys(node: Proc) -> int:
    import redis

    with redis.Redis(port=node.port) as r:
        return int(r.dbsize())


def _listeners(port: int) -> int:
    """How many sockets listen on `port` (one per worker with SO_REUSEPORT); gRPC may use IPv6 sockets."""
    suffix = f":{port:04X}"
    lines = [
        line.split() for table in ("tcp", "tcp6") for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]
    ]
    return sum(1 for fields in lines if fields[1].endswith(suffix) and fields[3] == "0A")


def test_workers_share_the_port(tmp_path: Path, own_postgres: str, redis_url: str) -> None:
    port = free_port()
    server = start_server(tmp_path, port, own_postgres, redis_url, [*FAST_SERVER_ARGS, "--workers", "2"])
    try:
        eventually(lambda: _listeners(port) == 2, timeout=60)  # the second worker starts as the first did
        for i in range(20):  # new connections land on either worker; all must serve
            with FeatureStoreClient(f"127.0.0.1:{port}") as client:
                register(client, f"w{i}", pb.INT64)
        time.sleep(0.3)
        for _ in range(20):
            with FeatureStoreClient(f"127.0.0.1:{port}") as client:
                wait_servable(client, "customer", *[f"w{i}" for i in range(20)])
    finally:
        server.stop()
    assert server.popen.returncode == 0
    assert _listeners(port) == 0


def test_registry_changes_reach_other_replicas_by_notification(
    tmp_path: Path, own_postgres: str, redis_url: str
) -> None:
    slow_poll = ["--health-interval", "0.2", "--registry-refresh-interval", "60"]  # only NOTIFY can be this fast
    a = start_server(tmp_path / "a", free_port(), own_postgres, redis_url, slow_poll)
    b = start_server(tmp_path / "b", free_port(), own_postgres, redis_url, slow_poll)
    try:
        with FeatureStoreClient(f"127.0.0.1:{a.port}") as on_a, FeatureStoreClient(f"127.0.0.1:{b.port}") as on_b:
            time.sleep(0.5)  # both are listening
            register(on_a, "notified", pb.INT64)
            assert wait_servable(on_a, "customer", "notified", timeout=0.05) < 0.05  # the writer's process: at once
            assert wait_servable(on_b, "customer", "notified", timeout=2.0) < 1.0  # another replica: notified
    finally:
        a.stop()
        b.stop()


def test_a_hung_redis_gives_unavailable_within_the_timeout_and_recovers(tmp_path: Path, own_postgres: str) -> None:
    import os
    import signal

    valkey = start_valkey(tmp_path / "valkey", free_port(), durable=False)
    args = [*FAST_SERVER_ARGS, "--redis-timeout", "0.3"]
    server = start_server(tmp_path, free_port(), own_postgres, str(valkey.extra["url"]), args)
    try:
        with FeatureStoreClient(f"127.0.0.1:{server.port}") as client:
            register(client, "x", pb.INT64)
            wait_servable(client, "customer", "x")
            write(client, [row("c1", now(), x=i64(1))])
            os.kill(valkey.popen.pid, signal.SIGSTOP)  # accepts nothing, answers nothing
            try:
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as info:
                    get(client, "c1", "x")
                assert error_details(info.value).code == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() - started < 1.5
            finally:
                os.kill(valkey.popen.pid, signal.SIGCONT)
            eventually(lambda: _reads(client))
            assert get(client, "c1", "x")["x"].value.int64_value == 1
    finally:
        server.stop()
        valkey.stop()


def _reads(client: FeatureStoreClient) -> bool:
    try:
        get(client, "c1", "x")
    except grpc.RpcError:
        return False
    return True
