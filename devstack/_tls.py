"""Envoy's TLS, laid over gateway/envoy.yaml: TLS on the public listener, and TLS or mTLS to the server.

Certificates reach Envoy through SDS resources read from files (`path_config_source`), so a
rotated certificate (a Kubernetes Secret swapping its files, or files replaced in place) is
served to new connections without a restart: Envoy watches each certificate's directory.
The same overlay makes the tests' TLS Envoy and the checked-in production config
(gateway/envoy-tls.yaml, written by `python -m devstack envoy-tls`; a test keeps it current).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
_SECRET = _TLS + "Secret"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
Config = dict[str, Any]


@dataclass(frozen=True)
class EnvoyTls:
    """Where Envoy finds its certificates; the upstream fields empty: plaintext to the server."""

    cert_file: str  # the public listener's certificate chain (PEM)
    key_file: str  # and its key
    sds_dir: str  # the folder of the SDS resource files (written next to the config)
    upstream_ca_file: str = ""  # the server serves TLS: its certificate must chain to this CA
    upstream_cert_file: str = ""  # and Envoy presents this client certificate (mTLS)
    upstream_key_file: str = ""
    upstream_server_name: str = "localhost"  # the name (SNI, DNS SAN) the server's certificate carries
    probe_port: int = 0  # a plaintext listener for the kubelet's gRPC probes: health checks only; 0 = none


def _sds(name: str, path: str) -> Config:
    return {"name": name, "sds_config": {"path_config_source": {"path": path}, "resource_api_version": "V3"}}


def _certificate(name: str, cert_file: str, key_file: str) -> Config:
    return {
        "@type": _SECRET,
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"filename": cert_file},
            "private_key": {"filename": key_file},
            # A Secret volume swaps a symlink in the folder: watch the folder, re-read both files.
            "watched_directory": {"path": str(Path(cert_file).parent)},
        },
    }


def _probe_listener(port: int) -> Config:
    """Plaintext, answering grpc.health.v1 Check alone (the kubelet's gRPC probes speak no TLS); the rest 404."""
    routes = [
        {
            "match": {"path": "/grpc.health.v1.Health/Check"},
            "route": {"cluster": "featurestore_grpc", "timeout": "5s"},
        },
        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
    ]
    manager = {
        "@type": _HCM,
        "stat_prefix": "probes",
        "codec_type": "AUTO",
        "route_config": {"name": "probes", "virtual_hosts": [{"name": "probes", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    return {
        "name": "probes",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},  # the kubelet dials the pod IP
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def with_tls(config: Config, tls: EnvoyTls) -> tuple[Config, dict[str, Config]]:
    """`config` with TLS on every listener (and to the server if asked; a plaintext probe listener if asked).

    Returns it and the SDS files it reads: name -> contents.
    """
    config = copy.deepcopy(config)
    config.setdefault("node", {"id": "featurestore-envoy", "cluster": "featurestore"})  # SDS needs a node
    sds_dir = Path(tls.sds_dir)
    files = {"edge-certificate.json": {"resources": [_certificate("edge_certificate", tls.cert_file, tls.key_file)]}}
    downstream = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TLS + "DownstreamTlsContext",
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificate_sds_secret_configs": [
                    _sds("edge_certificate", str(sds_dir / "edge-certificate.json"))
                ],
            },
        },
    }
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            chain["transport_socket"] = copy.deepcopy(downstream)
    if tls.probe_port:
        config["static_resources"]["listeners"].append(_probe_listener(tls.probe_port))
    if tls.upstream_ca_file:
        validation = {
            "trusted_ca": {"filename": tls.upstream_ca_file},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": tls.upstream_server_name}}],
            "watched_directory": {"path": str(Path(tls.upstream_ca_file).parent)},
        }
        files["upstream-ca.json"] = {
            "resources": [{"@type": _SECRET, "name": "upstream_ca", "validation_context": validation}]
        }
        common: Config = {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "alpn_protocols": ["h2"],
            "validation_context_sds_secret_config": _sds("upstream_ca", str(sds_dir / "upstream-ca.json")),
        }
        if tls.upstream_cert_file:
            client = _certificate("upstream_client_certificate", tls.upstream_cert_file, tls.upstream_key_file)
            files["upstream-client-certificate.json"] = {"resources": [client]}
            path = str(sds_dir / "upstream-client-certificate.json")
            common["tls_certificate_sds_secret_configs"] = [_sds("upstream_client_certificate", path)]
        upstream = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _TLS + "UpstreamTlsContext",
                "sni": tls.upstream_server_name,
                "common_tls_context": common,
            },
        }
        for cluster in config["static_resources"]["clusters"]:
            cluster["transport_socket"] = copy.deepcopy(upstream)
    return config, files
