"""Prometheus metrics of the server process, served on /metrics.

Recording is cheap enough for the hot path (a bound histogram child: about
half a microsecond per call). Metrics are process-wide by nature, so the
instruments live here; the composition root only decides whether and where
to serve them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()
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


def serve(host: str, port: int) -> None:
    """Serve /metrics on host:port from a background thread."""
    start_http_server(port, addr=host, registry=REGISTRY)
