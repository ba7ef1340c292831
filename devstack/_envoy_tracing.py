"""Envoy's own spans, exported by OTLP over HTTP: an overlay on gateway/envoy.yaml's configuration.

With it, Envoy makes a span per request (continuing the caller's W3C `traceparent`, or starting
a trace) and passes its own span on to the server in `traceparent`, so a trace shows the hop
through the gateway. Production: point `endpoint` at the OpenTelemetry collector.
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urlsplit

Config = dict[str, Any]
_CLUSTER = "otlp_collector"


def with_tracing(config: Config, endpoint: str, service_name: str = "featurestore-envoy") -> Config:
    """`config` with every listener's HTTP connection manager tracing to the OTLP/HTTP traces URL `endpoint`."""
    out = copy.deepcopy(config)
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"the OTLP endpoint {endpoint!r} must be an http:// URL (add a TLS transport for https)")
    for listener in out["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                if network_filter["name"].endswith("http_connection_manager"):
                    network_filter["typed_config"]["tracing"] = {
                        "provider": {
                            "name": "envoy.tracers.opentelemetry",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                                "http_service": {
                                    "http_uri": {"uri": endpoint, "cluster": _CLUSTER, "timeout": "2s"},
                                },
                                "service_name": service_name,
                            },
                        },
                    }
    address = {"socket_address": {"address": parts.hostname, "port_value": parts.port or 80}}
    out["static_resources"]["clusters"].append(
        {
            "name": _CLUSTER,
            "type": "STRICT_DNS",
            "connect_timeout": "2s",
            "load_assignment": {
                "cluster_name": _CLUSTER,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
            },
        }
    )
    return out
