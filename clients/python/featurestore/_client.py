"""A thin client over the generated stubs: one channel, both services."""

from __future__ import annotations

from types import TracebackType

import grpc

from featurestore.registry.v1 import registry_service_pb2_grpc
from featurestore.serving.v1 import feature_store_service_pb2_grpc

_DEFAULT_OPTIONS = (
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
)


class FeatureStoreClient:
    """Synchronous client: `client.registry` and `client.store` are the generated stubs.

    >>> with FeatureStoreClient("localhost:50051") as client:
    ...     client.registry.GetFeature(GetFeatureRequest(name="customer_total_purchases_30d"))
    """

    def __init__(self, target: str, *, channel: grpc.Channel | None = None) -> None:
        self.channel = channel or grpc.insecure_channel(target, options=_DEFAULT_OPTIONS)
        self.registry = registry_service_pb2_grpc.RegistryServiceStub(self.channel)
        self.store = feature_store_service_pb2_grpc.FeatureStoreServiceStub(self.channel)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> FeatureStoreClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
