"""The online store: latest feature values in Redis, served with one round trip per request."""

from server.online._catalog import VALUE_KINDS, Catalog, CatalogRefresher
from server.online._redis import KeyWrite, RedisOnlineStore, connect, entity_key
from server.online._requests import Limits
from server.online._servicer import SERVICE, OnlineServicer, handler
from server.online._store import OnlineStore

__all__ = [
    "SERVICE",
    "VALUE_KINDS",
    "Catalog",
    "CatalogRefresher",
    "KeyWrite",
    "Limits",
    "OnlineServicer",
    "OnlineStore",
    "RedisOnlineStore",
    "connect",
    "entity_key",
    "handler",
]
