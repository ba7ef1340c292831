"""The online store: latest feature values in Redis, served with one round trip per request."""

from server.online._catalog import Catalog, CatalogRefresher, Plan
from server.online._forward import WriteForwarder
from server.online._redis import RedisOnlineStore, connect
from server.online._servicer import OnlineServicer, methods
from server.online._store import HistorySink, OnlineStore

__all__ = [
    "Catalog",
    "CatalogRefresher",
    "HistorySink",
    "OnlineServicer",
    "OnlineStore",
    "Plan",
    "RedisOnlineStore",
    "WriteForwarder",
    "connect",
    "methods",
]
