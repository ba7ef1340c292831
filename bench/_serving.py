"""What the serving benchmarks share about the running server."""

from __future__ import annotations

import time

import grpc

from featurestore import FeatureStoreClient
from featurestore.serving.v1 import feature_store_service_pb2 as fs


def wait_servable(client: FeatureStoreClient, group: str, entity_type: str = "user") -> None:
    """Block until the server serves `group` (registry changes reach the serving snapshot within moments)."""
    request = fs.GetFeaturesRequest(entity_type=entity_type, entity_id="probe", feature_groups=[group])
    deadline = time.monotonic() + 10
    while True:
        try:
            client.store.GetFeatures(request)
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
