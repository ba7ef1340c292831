"""Operating the server: grpcurl and reflection, health, PostgreSQL outages, graceful drain."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from devstack import Proc
from featurestore import FeatureStoreClient, error_details
from featurestore.registry.v1 import registry_service_pb2 as rs
from tests._helpers import Processes, eventually, grpcurl, health_status

REGISTRY = "featurestore.registry.v1.RegistryService"


@pytest.mark.usefixtures("empty_registry")
@pytest.mark.parametrize("port_of", ["server", "envoy"])
def test_grpcurl_lists_describes_and_calls(port_of: str, request: pytest.FixtureRequest) -> None:
    proc: Proc = request.getfixturevalue(port_of)
    target = f"127.0.0.1:{proc.port}"
    listed = grpcurl(target, "list")
    assert listed.returncode == 0, listed.stderr
    assert {REGISTRY, "grpc.health.v1.Health"} <= set(listed.stdout.split())
    described = grpcurl(target, "describe", REGISTRY)
    assert "rpc CreateFeature ( .featurestore.registry.v1.CreateFeatureRequest )" in described.stdout
    body = json.dumps({"feature": {"name": "via_grpcurl", "entity_type": "customer", "value_type": "INT64"}})
    created = grpcurl("-d", body, target, f"{REGISTRY}/CreateFeature")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["value_type"] == "INT64"
    missing = grpcurl("-d", '{"name": "nope"}', target, f"{REGISTRY}/GetFeature")
    assert missing.returncode == 64 + grpc.StatusCode.NOT_FOUND.value[0]
    assert "FEATURE_NOT_FOUND" in missing.stdout + missing.stderr


def test_health_reports_each_service(grpc_target: str) -> None:
    assert health_status(grpc_target) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(grpc_target, REGISTRY) == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def own_stack(processes: Processes) -> tuple[Proc, Proc, Proc]:
    """PostgreSQL, Valkey and a server of this test's own, to break without harming others."""
    postgres = processes.postgres(durable=True)  # durable: it will be killed
    valkey = processes.valkey()
    server = processes.server(str(postgres.extra["dsn"]), str(valkey.extra["url"]))
    return postgres, valkey, server


def test_postgres_outage_gives_unavailable_fast_and_recovers(
    own_stack: tuple[Proc, Proc, Proc], processes: Processes, tmp_path: Path
) -> None:
    postgres, _, server = own_stack
    target = f"127.0.0.1:{server.port}"
    with FeatureStoreClient(target) as client:
        client.registry.ListFeatures(rs.ListFeaturesRequest(), timeout=5)
        postgres.kill()
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            client.registry.ListFeatures(rs.ListFeaturesRequest(), timeout=10)
        assert time.monotonic() - started < 3
        assert error_details(info.value).code == grpc.StatusCode.UNAVAILABLE
        assert error_details(info.value).reason == "POSTGRESQL_UNAVAILABLE"
        eventually(lambda: health_status(target, REGISTRY) == health_pb2.HealthCheckResponse.NOT_SERVING)
        assert server.running()

        processes.postgres(tmp_path / "postgres", postgres.port, durable=True)
        eventually(lambda: health_status(target, REGISTRY) == health_pb2.HealthCheckResponse.SERVING)
        eventually(lambda: _lists(client))


def _lists(client: FeatureStoreClient) -> bool:
    try:
        client.registry.ListFeatures(rs.ListFeaturesRequest(), timeout=5)
    except grpc.RpcError:
        return False
    return True


def test_sigterm_drains_and_exits_cleanly(own_stack: tuple[Proc, Proc, Proc]) -> None:
    _, _, server = own_stack
    target = f"127.0.0.1:{server.port}"
    assert health_status(target) == health_pb2.HealthCheckResponse.SERVING
    server.popen.send_signal(signal.SIGTERM)
    assert server.popen.wait(timeout=15) == 0
    assert "draining" in server.log.read_text()


def test_gateway_config_in_the_repository_is_valid() -> None:
    envoy = Path(sys.executable).parent / "envoy"
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", "gateway/envoy.yaml"], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout + done.stderr


def test_migrate_only_applies_migrations_and_exits(tmp_path: Path, postgres_dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server", "--migrate-only", "true", "--postgres-dsn", postgres_dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_metrics_endpoint_counts_calls_errors_and_store_health(server: Proc, client: FeatureStoreClient) -> None:
    import urllib.request

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.extra['metrics_port']}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def value(text: str, line_start: str) -> float:
        found = [line for line in text.splitlines() if line.startswith(line_start)]
        return float(found[0].rsplit(" ", 1)[1]) if found else 0.0

    before = scrape()
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            client.registry.GetFeature(rs.GetFeatureRequest(name="no_such_feature"))
    calls = 'featurestore_rpc_duration_seconds_count{method="GetFeature"}'
    errors = 'featurestore_rpc_errors_total{code="NOT_FOUND",method="GetFeature"}'
    # a call's duration is recorded just after its status went out: give the last one a moment
    eventually(lambda: value(scrape(), calls) - value(before, calls) == 3)
    after = scrape()
    assert value(after, calls) - value(before, calls) == 3
    assert value(after, errors) - value(before, errors) == 3
    assert value(after, 'featurestore_store_up{store="postgresql"}') == 1
    assert value(after, 'featurestore_store_up{store="redis"}') == 1
