"""The gRPC services the server implements, from the protos' descriptors."""

from __future__ import annotations

from featurestore.registry.v1 import registry_service_pb2
from featurestore.serving.v1 import feature_store_service_pb2

REGISTRY_SERVICE = registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"]
FEATURE_STORE_SERVICE = feature_store_service_pb2.DESCRIPTOR.services_by_name["FeatureStoreService"]
