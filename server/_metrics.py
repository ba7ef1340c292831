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

import bisect
import contextlib
import functools
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

REGISTRY = CollectorRegistry()
enabled = True  # read on the hot path: recording is skipped while False


class _Child:
    """A bound label set: `observe(amount)` (histograms) or `inc(amount=1)` (counters)."""

    __slots__ = ("inc", "observe")

    def __init__(self, observe: Callable[[float], None], inc: Callable[..., None]) -> None:
        self.observe = observe
        self.inc = inc


class _Lean(Collector):
    """A counter or histogram whose recording is a few list operations: no lock, no Python loop.

    prometheus_client takes a lock per increment and walks the buckets in Python (about
    2.5 µs per observation on a loaded 2-core machine); these cost a bisect (C) and two
    list increments. Only the event loop's thread records (one writer); the scrape thread
    reads a copy, so a scrape may miss an observation in flight, never corrupt one.
    """

    def __init__(
        self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float] | None, registry: CollectorRegistry
    ) -> None:
        self._name, self._doc, self._labels = name, doc, list(labels)
        self._bounds = None if buckets is None else (*(float(b) for b in buckets), math.inf)
        self._children: dict[tuple[str, ...], tuple[list[float], _Child]] = {}
        self._lock = threading.Lock()  # taken only to add a label set
        registry.register(self)

    def labels(self, *values: str) -> _Child:
        key = tuple(str(v) for v in values)
        found = self._children.get(key)
        if found is None:
            with self._lock:
                found = self._children.get(key) or self._child(key)
        return found[1]

    def _child(self, key: tuple[str, ...]) -> tuple[list[float], _Child]:
        bounds = self._bounds
        counts: list[float] = [0.0] * ((len(bounds) + 1) if bounds is not None else 1)
        total = len(counts) - 1

        def observe(amount: float) -> None:
            counts[bisect.bisect_left(bounds, amount)] += 1  # type: ignore[arg-type]
            counts[total] += amount

        def inc(amount: float = 1) -> None:
            counts[0] += amount

        found = (counts, _Child(observe, inc))
        self._children = {**self._children, key: found}
        return found

    def collect(self) -> Iterable[Metric]:
        family: Metric
        if self._bounds is None:
            family = CounterMetricFamily(self._name.removesuffix("_total"), self._doc, labels=self._labels)
            for key, (counts, _) in self._children.items():
                family.add_metric(list(key), counts[0])
            yield family
            return
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labels)
        for key, (counts, _) in self._children.items():
            snapshot, cumulative, buckets = counts[:], 0.0, []
            for bound, n in zip(self._bounds, snapshot, strict=False):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            family.add_metric(list(key), buckets, snapshot[-1])
        yield family


def _histogram(
    name: str, doc: str, labels: Sequence[str], buckets: Sequence[float], registry: CollectorRegistry
) -> _Lean:
    return _Lean(name, doc, labels, buckets, registry)


def _counter(name: str, doc: str, labels: Sequence[str], registry: CollectorRegistry) -> _Lean:
    return _Lean(name, doc, labels, None, registry)


def set_enabled(flag: bool) -> None:
    """Record metrics (True, the default) or not (False: for measuring their cost)."""
    global enabled  # one process-wide switch, read as a module attribute
    enabled = flag


RPC_SECONDS = _histogram(
    "featurestore_rpc_duration_seconds",
    "Time to handle an RPC, by method (its count is the number of calls).",
    ["method"],
    (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
    REGISTRY,
)
RPC_ERRORS = _counter(
    "featurestore_rpc_errors_total",
    "RPCs answered with an error, by method and gRPC code.",
    ["method", "code"],
    REGISTRY,
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
_SERVED = _counter(
    "featurestore_feature_values_served_total",
    "Feature values answered by online reads, by status (PRESENT, NOT_FOUND, EXPIRED) and by the feature "
    "group the request named (_features: named by feature; _several: several groups, or groups and names; "
    "_other: past the label limit).",
    ["feature_group", "status"],
    REGISTRY,
)
_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
REQUEST_FEATURES = _histogram(
    "featurestore_request_features",
    "Features an online read asks for (per entity), by method.",
    ["method"],
    _SIZE_BUCKETS,
    REGISTRY,
)
REQUEST_ENTITIES = _histogram(
    "featurestore_request_entities",
    "Entities a batch read or a write carries, by method.",
    ["method"],
    _SIZE_BUCKETS,
    REGISTRY,
)
STORE_SECONDS = _histogram(
    "featurestore_store_call_duration_seconds",
    "Time of calls to a backing store, by store and call (redis: read/write/ping; postgresql: the "
    "statement's verb, or history_append for the history's group commits).",
    ["store", "call"],
    (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
    REGISTRY,
)
STORE_ERRORS = _counter(
    "featurestore_store_call_errors_total",
    "Calls to a backing store that failed (error reply, timeout, lost connection), by store and call.",
    ["store", "call"],
    REGISTRY,
)
POOL_WAIT_SECONDS = _histogram(
    "featurestore_postgres_pool_wait_seconds",
    "Time callers waited for a PostgreSQL connection, by pool (main: registry and writes; read: history and "
    "training reads).",
    ["pool"],
    (0.0001, 0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0),
    REGISTRY,
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
