"""Prometheus metrics of the server process, served on /metrics.

Recording is cheap enough for the hot path: label children are bound once (at
import, or the first time a label value is seen) and a request then costs a few
counter increments and histogram observations (about half a microsecond each),
never a loop over its values. Metrics are process-wide by nature, so the
instruments live here; the composition root only decides whether and where to
serve them, and may switch recording off (`set_enabled(False)`, for measuring
what it costs). docs/operations.md lists every metric and its labels.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()
enabled = True  # read on the hot path: recording is skipped while False


def set_enabled(flag: bool) -> None:
    """Record metrics (True, the default) or not (False: for measuring their cost)."""
    global enabled  # one process-wide switch, read as a module attribute
    enabled = flag


RPC_SECONDS = Histogram(
    "featurestore_rpc_duration_seconds",
    "Time to handle an RPC, by method (its count is the number of calls).",
    ["method"],
    buckets=(0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
    registry=REGISTRY,
)
RPC_ERRORS = Counter(
    "featurestore_rpc_errors_total",
    "RPCs answered with an error, by method and gRPC code.",
    ["method", "code"],
    registry=REGISTRY,
)
STORE_UP = Gauge(
    "featurestore_store_up", "1 while a backing store answers its health probe.", ["store"], registry=REGISTRY
)
REGISTRY_VERSION = Gauge(
    "featurestore_registry_snapshot_version", "Registry version the serving snapshot reflects.", registry=REGISTRY
)
REGISTRY_FEATURES = Gauge(
    "featurestore_registry_snapshot_features", "Features in the serving snapshot.", registry=REGISTRY
)
REGISTRY_LOADED = Gauge(
    "featurestore_registry_snapshot_loaded_timestamp_seconds",
    "When the serving snapshot was loaded (Unix time).",
    registry=REGISTRY,
)
REGISTRY_CHECKED = Gauge(
    "featurestore_registry_snapshot_checked_timestamp_seconds",
    "When the serving snapshot was last confirmed equal to the registry (Unix time); "
    "time() minus this is how stale serving may be.",
    registry=REGISTRY,
)
_SERVED = Counter(
    "featurestore_feature_values_served_total",
    "Feature values answered by online reads, by status (PRESENT, NOT_FOUND, EXPIRED) and by the feature "
    "group the request named (_features: named by feature; _several: several groups, or groups and names; "
    "_other: past the label limit).",
    ["feature_group", "status"],
    registry=REGISTRY,
)
_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
REQUEST_FEATURES = Histogram(
    "featurestore_request_features",
    "Features an online read asks for (per entity), by method.",
    ["method"],
    buckets=_SIZE_BUCKETS,
    registry=REGISTRY,
)
REQUEST_ENTITIES = Histogram(
    "featurestore_request_entities",
    "Entities a batch read or a write carries, by method.",
    ["method"],
    buckets=_SIZE_BUCKETS,
    registry=REGISTRY,
)
STORE_SECONDS = Histogram(
    "featurestore_store_call_duration_seconds",
    "Time of calls to a backing store, by store and call (redis: read/write/ping; postgresql: the "
    "statement's verb, or history_append for the history's group commits).",
    ["store", "call"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "featurestore_store_call_errors_total",
    "Calls to a backing store that failed (error reply, timeout, lost connection), by store and call.",
    ["store", "call"],
    registry=REGISTRY,
)
POOL_WAIT_SECONDS = Histogram(
    "featurestore_postgres_pool_wait_seconds",
    "Time callers waited for a PostgreSQL connection, by pool (main: registry and writes; read: history and "
    "training reads).",
    ["pool"],
    buckets=(0.0001, 0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0),
    registry=REGISTRY,
)

# The feature_group label takes at most this many distinct values; later ones count as _other.
MAX_GROUP_LABELS = 200
_STATUSES = ("PRESENT", "NOT_FOUND", "EXPIRED")
_served_children: dict[str, tuple[Any, Any, Any]] = {}
_served_lock = threading.Lock()


def served_counters(label: str) -> tuple[Callable[[float], None], Callable[[float], None], Callable[[float], None]]:
    """The inc() of the PRESENT, NOT_FOUND and EXPIRED counters of `label` (bound once per label)."""
    found = _served_children.get(label)
    if found is None:
        with _served_lock:
            if label not in _served_children and len(_served_children) >= MAX_GROUP_LABELS:
                return served_counters("_other")
            found = _served_children.get(label)
            if found is None:
                found = tuple(_SERVED.labels(label, status).inc for status in _STATUSES)  # type: ignore[assignment]
                _served_children[label] = found  # type: ignore[assignment]
    return found  # type: ignore[return-value]


def store_timer(store: str, call: str) -> tuple[Callable[[float], None], Callable[[], None]]:
    """The bound observe() of a store call's duration and inc() of its errors."""
    return STORE_SECONDS.labels(store, call).observe, STORE_ERRORS.labels(store, call).inc


_VERBS = frozenset({"select", "insert", "update", "delete", "with", "copy", "create", "alter", "drop", "listen"})


@functools.lru_cache(maxsize=512)
def _postgres_children(query: str) -> tuple[Callable[[float], None], Callable[[], None]]:
    """The duration and error children of a statement: labelled by its first keyword if a common one."""
    words = query.lstrip(" (\n").split(None, 1)
    verb = words[0].lower() if words else ""
    return store_timer("postgresql", verb if verb in _VERBS else "other")


def observe_postgres(query: str, seconds: float, error: BaseException | None) -> None:
    """Record one PostgreSQL statement (an asyncpg query logger)."""
    if enabled:
        observe, failed = _postgres_children(query)
        observe(seconds)
        if error is not None:
            failed()


Rows = Callable[[], Iterable[tuple[Sequence[str], float]]]


class _Sampled(Collector):
    """Gauges read at scrape time (sizes of pools, caches and queues): name -> a function of rows."""

    def __init__(self) -> None:
        self._sources: dict[str, tuple[str, list[str], Rows]] = {}

    def set(self, name: str, doc: str, labels: Sequence[str], rows: Rows) -> None:
        """Serve gauge `name` from `rows()` (label values, value); replaces an earlier source of that name."""
        self._sources = {**self._sources, name: (doc, list(labels), rows)}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, (doc, labels, rows) in self._sources.items():
            family = GaugeMetricFamily(name, doc, labels=labels)
            with contextlib.suppress(Exception):  # a source gone away (a closed pool) reports nothing
                for values, value in rows():
                    family.add_metric(list(values), float(value))
            yield family


SAMPLED = _Sampled()
REGISTRY.register(SAMPLED)


def mark_registry_checked(version: int, features: int, *, loaded: bool) -> None:
    """A registry check succeeded; `loaded`: a new snapshot was swapped in."""
    now = time.time()
    REGISTRY_CHECKED.set(now)
    if loaded:
        REGISTRY_VERSION.set(version)
        REGISTRY_FEATURES.set(features)
        REGISTRY_LOADED.set(now)


def serve(host: str, port: int) -> None:
    """Serve /metrics on host:port from a background thread."""
    start_http_server(port, addr=host, registry=REGISTRY)
