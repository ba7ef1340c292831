"""The server's /metrics after real traffic: statuses served, request sizes, store calls, pools, freshness."""

from __future__ import annotations

import time
import urllib.error
from datetime import timedelta

import grpc
import pytest

from devstack import Proc
from featurestore import FeatureStoreClient
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from tests._helpers import FAST_SERVER_ARGS, Processes, eventually
from tests._metrics import Samples, scrape, value
from tests._online import ago, f64, register, row, wait_servable, write


@pytest.fixture
def own_server(processes: Processes, postgres_dsn: str, redis_url: str) -> Proc:
    """A server of this test's own (its metrics are not shared), freshness synced every 0.2 s."""
    return processes.server(postgres_dsn, redis_url, [*FAST_SERVER_ARGS, "--freshness-interval", "0.2"])


def _port(server: Proc) -> int:
    return int(str(server.extra["metrics_port"]))


def _group(client: FeatureStoreClient, group: str, names: list[str]) -> None:
    fg = pb.FeatureGroup(name=group, entity_type="customer", feature_names=names)
    client.registry.CreateFeatureGroup(rs.CreateFeatureGroupRequest(feature_group=fg))


def test_reads_count_values_by_status_and_group_and_store_calls(own_server: Proc) -> None:
    port = _port(own_server)
    names = ["m_present", "m_missing", "m_expired"]
    with FeatureStoreClient(f"127.0.0.1:{own_server.port}") as client:
        register(client, "m_present", pb.FLOAT)
        register(client, "m_missing", pb.FLOAT)
        register(client, "m_expired", pb.FLOAT, max_age=timedelta(hours=1))
        _group(client, "m_group", names)
        wait_servable(client, "customer", *names)
        write(client, [row("mc1", ago(minutes=1), m_present=f64(1.0)), row("mc1", ago(hours=2), m_expired=f64(2.0))])
        before = scrape(port)
        for _ in range(3):
            client.store.GetFeatures(
                fs.GetFeaturesRequest(entity_type="customer", entity_id="mc1", feature_groups=["m_group"])
            )
        batch = fs.BatchGetFeaturesRequest(entity_type="customer", entity_ids=["mc1", "mc2"], feature_names=names)
        client.store.BatchGetFeatures(batch)
        with pytest.raises(grpc.RpcError):
            client.store.GetFeatures(
                fs.GetFeaturesRequest(entity_type="customer", entity_id="x", feature_names=["nope"])
            )
    eventually(
        lambda: _delta(scrape(port), before, "featurestore_rpc_duration_seconds_count", method="BatchGetFeatures") == 1
    )
    after = scrape(port)

    served = "featurestore_feature_values_served_total"
    assert _delta(after, before, served, feature_group="m_group", status="PRESENT") == 3
    assert _delta(after, before, served, feature_group="m_group", status="NOT_FOUND") == 3
    assert _delta(after, before, served, feature_group="m_group", status="EXPIRED") == 3
    # the batch named features: mc1 present/missing/expired, mc2 all missing
    assert _delta(after, before, served, feature_group="_features", status="PRESENT") == 1
    assert _delta(after, before, served, feature_group="_features", status="NOT_FOUND") == 4
    assert _delta(after, before, served, feature_group="_features", status="EXPIRED") == 1

    assert _delta(after, before, "featurestore_request_features_count", method="GetFeatures") == 3
    assert _delta(after, before, "featurestore_request_features_sum", method="GetFeatures") == 9
    assert _delta(after, before, "featurestore_request_entities_sum", method="BatchGetFeatures") == 2
    assert _delta(after, before, "featurestore_request_entities_count", method="WriteFeatures") == 0
    reads = "featurestore_store_call_duration_seconds_count"
    assert _delta(after, before, reads, store="redis", call="read") == 4  # the failed call never reached Redis
    assert value(after, "featurestore_store_call_duration_seconds_count", store="redis", call="write") >= 1
    assert value(after, "featurestore_store_call_duration_seconds_count", store="postgresql", call="select") > 0
    assert (
        value(after, "featurestore_store_call_duration_seconds_count", store="postgresql", call="history_append") >= 1
    )
    assert value(after, "featurestore_request_entities_sum", method="WriteFeatures") >= 2
    assert value(after, "featurestore_postgres_pool_connections", pool="main", state="max") > 0
    assert value(after, "featurestore_postgres_pool_wait_seconds_count", pool="main") > 0
    assert value(after, "featurestore_plan_cache_plans") >= 2
    assert value(after, "featurestore_registry_definitions", entity_type="customer", kind="feature") >= 3
    assert value(after, "featurestore_registry_definitions", entity_type="customer", kind="feature_group") >= 1
    assert abs(value(after, "featurestore_registry_snapshot_checked_timestamp_seconds") - time.time()) < 30
    assert ("featurestore_redis_requests_pending", frozenset()) in after


def _delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_freshness_gauges_move_when_written_and_as_time_passes(own_server: Proc) -> None:
    port = _port(own_server)
    with FeatureStoreClient(f"127.0.0.1:{own_server.port}") as client:
        register(client, "m_fresh", pb.FLOAT, max_age=timedelta(hours=3))
        wait_servable(client, "customer", "m_fresh")
        first = ago(minutes=30)
        write(client, [row("fc1", first, m_fresh=f64(1.0))])
        newest = "featurestore_feature_newest_event_timestamp_seconds"
        labels = {"feature": "m_fresh", "entity_type": "customer"}
        eventually(lambda: value(scrape(port), newest, **labels) == first.timestamp())
        one = scrape(port)
        assert value(one, "featurestore_feature_max_age_seconds", frequency="REALTIME", **labels) == 3 * 3600
        assert abs(value(one, "featurestore_feature_written_timestamp_seconds", **labels) - time.time()) < 30
        time.sleep(1.1)
        two = scrape(port)
        aged = value(two, "featurestore_feature_age_seconds", **labels) - value(
            one, "featurestore_feature_age_seconds", **labels
        )
        assert aged >= 1.0

        write(client, [row("fc2", ago(hours=2), m_fresh=f64(2.0))])  # older: freshness stays
        later = ago(minutes=1)
        write(client, [row("fc3", later, m_fresh=f64(3.0))])
        eventually(lambda: value(scrape(port), newest, **labels) == later.timestamp())
        assert value(scrape(port), "featurestore_feature_age_seconds", **labels) < 120


def test_metrics_off_records_and_serves_nothing(processes: Processes, postgres_dsn: str, redis_url: str) -> None:
    server = processes.server(postgres_dsn, redis_url, [*FAST_SERVER_ARGS, "--metrics", "false"])
    with FeatureStoreClient(f"127.0.0.1:{server.port}") as client:
        client.registry.ListFeatures(rs.ListFeaturesRequest())
    with pytest.raises(urllib.error.URLError):
        scrape(_port(server))


def test_every_worker_serves_its_own_metrics_and_together_they_count_every_call(
    processes: Processes, postgres_dsn: str, redis_url: str
) -> None:
    server = processes.server(postgres_dsn, redis_url, [*FAST_SERVER_ARGS, "--workers", "2"])
    ports = [_port(server), _port(server) + 1]
    eventually(lambda: all(_answers(port) for port in ports))
    calls = "featurestore_rpc_duration_seconds_count"
    before = sum(value(scrape(port), calls, method="ListFeatures") for port in ports)
    for _ in range(6):  # a channel each: the kernel spreads connections over the workers
        with FeatureStoreClient(f"127.0.0.1:{server.port}") as client:
            client.registry.ListFeatures(rs.ListFeaturesRequest())
    eventually(lambda: sum(value(scrape(port), calls, method="ListFeatures") for port in ports) - before == 6)


def _answers(port: int) -> bool:
    try:
        scrape(port)
    except urllib.error.URLError:
        return False
    return True
