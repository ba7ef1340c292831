"""The Feature Registry: feature and feature group definitions in PostgreSQL."""

from server.registry._model import Feature, FeatureFilter, FeatureGroup, GroupFilter, Meta, Page
from server.registry._pgstore import PostgresRegistryStore
from server.registry._servicer import RegistryServicer
from server.registry._store import RegistryStore

__all__ = [
    "Feature",
    "FeatureFilter",
    "FeatureGroup",
    "GroupFilter",
    "Meta",
    "Page",
    "PostgresRegistryStore",
    "RegistryServicer",
    "RegistryStore",
]
