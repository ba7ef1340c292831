"""Envoy's local rate limits (issue 13): per client identity and per route, 429 with a JSON google.rpc.Status, recovery.

The buckets of gateway/envoy.yaml are resized small (devstack's RateLimit) so a test reaches them
in a few calls. Envoy refills its buckets on a timer, so a refill may fall inside a burst: each
burst is long enough to reach the limit even then, and nothing here measures time.
"""

from __future__ import annotations

import http.client
import json
import uuid
from typing import Any

import grpc
import pytest

from devstack import Proc, RateLimit, free_port, start_envoy
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.registry.v1 import registry_service_pb2_grpc as rs_grpc
from tests._helpers import Processes, eventually, reaped

PATH = "/api/feature-registry/features"


def get(envoy: Proc, token: str | None) -> tuple[int, Any, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=30)
    try:
        conn.request("GET", PATH, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null"), dict(resp.getheaders())
    finally:
        conn.close()


def burst(envoy: Proc, tokens: list[str | None]) -> tuple[list[int], Any, dict[str, str]]:
    """One GET per token, in order, up to the first 429: the statuses, and the last answer's body and headers."""
    statuses: list[int] = []
    body: Any = None
    headers: dict[str, str] = {}
    for token in tokens:
        status, body, headers = get(envoy, token)
        statuses.append(status)
        if status == 429:
            break
    return statuses, body, headers


def limited(statuses: list[int]) -> bool:
    """Allowed at first, refused in the end."""
    return statuses[0] == 200 and statuses[-1] == 429


def limited_envoy(processes: Processes, server: Proc, limit: RateLimit) -> Proc:
    return processes.add(reaped(lambda: start_envoy(processes.directory, free_port(), server.port, rate_limit=limit)))


def test_a_client_over_its_limit_gets_429_others_do_not_and_it_recovers(processes: Processes, server: Proc) -> None:
    envoy = limited_envoy(processes, server, RateLimit(route=1000, client=3, seconds=3))
    alice, bob = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"
    statuses, body, headers = burst(envoy, [alice] * 8)  # 3 allowed, then 429 (a refill on the way allows 3 more)
    assert limited(statuses), statuses
    assert body["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert body["details"][0]["reason"] == "RATE_LIMITED"
    assert headers["x-ratelimit-limit"] == "3"
    assert get(envoy, bob)[0] == 200  # another identity has its own bucket

    with grpc.insecure_channel(f"127.0.0.1:{envoy.port}") as channel:  # native gRPC, the same limit
        stub = rs_grpc.RegistryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListFeatures(rs.ListFeaturesRequest(), metadata=(("authorization", f"Bearer {alice}"),), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    eventually(lambda: get(envoy, alice)[0] == 200, timeout=30, interval=0.5)  # refilled


def test_callers_without_a_token_are_limited_by_address(processes: Processes, server: Proc) -> None:
    envoy = limited_envoy(processes, server, RateLimit(route=1000, client=3, seconds=3))
    statuses, body, _ = burst(envoy, [None] * 8)
    assert limited(statuses), statuses
    assert body["details"][0]["reason"] == "RATE_LIMITED"
    assert get(envoy, f"carol-{uuid.uuid4().hex}")[0] == 200  # a token is an identity of its own


def test_a_route_has_a_limit_over_all_clients(processes: Processes, server: Proc) -> None:
    envoy = limited_envoy(processes, server, RateLimit(route=4, client=1000, seconds=3))
    statuses, _, _ = burst(envoy, [f"client-{n}" for n in range(10)])  # a new identity every call
    assert limited(statuses), statuses
    eventually(lambda: get(envoy, "client-late")[0] == 200, timeout=30, interval=0.5)


def test_the_checked_in_limits_are_generous_for_feature_calls(processes: Processes, server: Proc) -> None:
    """gateway/envoy.yaml as shipped: a burst of calls from one client passes."""
    envoy = processes.add(reaped(lambda: start_envoy(processes.directory, free_port(), server.port)))
    assert burst(envoy, ["one-client"] * 30)[0] == [200] * 30
    headers = get(envoy, "one-client")[2]
    assert int(headers["x-ratelimit-limit"]) == 1000  # the registry route's per-client bucket
