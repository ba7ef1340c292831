"""The online store under faults and at scale: Redis outages, Redis Cluster, several workers."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from devstack import Proc, free_port
from featurestore import FeatureStoreClient, error_details
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from tests._helpers import FAST_SERVER_ARGS, Processes, eventually, health_status, run_sql
from tests._online import get, i64, now, register, row, wait_servable, write

STORE = "featurestore.serving.v1.FeatureStoreService"


@pytest.fixture
def own_postgres(processes: Processes) -> str:
    return str(processes.postgres().extra["dsn"])


def test_redis_outage_gives_unavailable_fast_and_recovers(processes: Processes, own_postgres: str) -> None:
    valkey = processes.valkey(durable=True)  # durable: its data must survive the restart
    server = processes.server(own_postgres, str(valkey.extra["url"]))
    target = f"127.0.0.1:{server.port}"
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
            health_status(target, "featurestore.registry.v1.RegistryService") == health_pb2.HealthCheckResponse.SERVING
        )
        assert server.running()

        processes.valkey(port=valkey.port, durable=True)
        eventually(lambda: health_status(target, STORE) == health_pb2.HealthCheckResponse.SERVING)
        assert get(client, "c1", "x")["x"].value.int64_value == 7


@pytest.fixture
def cluster(processes: Processes) -> list[Proc]:
    return processes.valkey_cluster()


def test_redis_cluster_reads_and_writes_across_slots(
    processes: Processes, own_postgres: str, cluster: list[Proc]
) -> None:
    seed = f"redis://127.0.0.1:{cluster[0].port}/0"
    server = processes.server(own_postgres, seed, [*FAST_SERVER_ARGS, "--redis-cluster", "true"])
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


def test_workers_share_the_port(processes: Processes, own_postgres: str, redis_url: str) -> None:
    port = free_port()
    server = processes.server(own_postgres, redis_url, [*FAST_SERVER_ARGS, "--workers", "2"], port=port)
    eventually(lambda: _listeners(port) == 2, timeout=60)  # the second worker starts as the first did
    for i in range(20):  # new connections land on either worker; all must serve
        with FeatureStoreClient(f"127.0.0.1:{port}") as client:
            register(client, f"w{i}", pb.INT64)
    for _ in range(20):  # each worker serves them once its snapshot has them
        with FeatureStoreClient(f"127.0.0.1:{port}") as client:
            wait_servable(client, "customer", *[f"w{i}" for i in range(20)], timeout=30)
    server.stop()
    assert server.popen.returncode == 0
    assert _listeners(port) == 0


def _listening_for_changes(dsn: str) -> int:
    """How many connections to the database at `dsn` wait for registry notifications (LISTEN)."""
    rows = run_sql(dsn, "SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE 'LISTEN %'")
    return int(rows[0]["n"])


def test_registry_changes_reach_other_replicas_by_notification(
    processes: Processes, tmp_path: Path, own_postgres: str, redis_url: str
) -> None:
    slow_poll = ["--health-interval", "0.2", "--registry-refresh-interval", "60"]  # only NOTIFY can be this fast
    a = processes.server(own_postgres, redis_url, slow_poll, state_dir=tmp_path / "a")
    b = processes.server(own_postgres, redis_url, slow_poll, state_dir=tmp_path / "b")
    with FeatureStoreClient(f"127.0.0.1:{a.port}") as on_a, FeatureStoreClient(f"127.0.0.1:{b.port}") as on_b:
        eventually(lambda: _listening_for_changes(own_postgres) == 2)  # both are listening
        register(on_a, "notified", pb.INT64)
        # the writer's process: at once (timeout 0: the first read must find it; the bound is for a loaded machine)
        assert wait_servable(on_a, "customer", "notified", timeout=0) < 5.0
        assert wait_servable(on_b, "customer", "notified", timeout=30) < 10  # another replica: notified, not polled


def test_a_hung_redis_gives_unavailable_within_the_timeout_and_recovers(
    processes: Processes, own_postgres: str
) -> None:
    import os
    import signal

    valkey = processes.valkey()
    server = processes.server(own_postgres, str(valkey.extra["url"]), [*FAST_SERVER_ARGS, "--redis-timeout", "0.3"])
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


def _reads(client: FeatureStoreClient) -> bool:
    try:
        get(client, "c1", "x")
    except grpc.RpcError:
        return False
    return True
