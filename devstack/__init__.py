"""The local stack: real PostgreSQL, Valkey, server and Envoy on loopback (for `make up` and tests).

Every server comes from a PyPI wheel; `start_*` start one as a child process and wait until
it answers; the demo definitions and data are loaded by `load_demo` / `load_demo_history`.
"""

from devstack._auth import DevAuth, dev_auth
from devstack._demo import FEATURES as DEMO_FEATURES
from devstack._demo import STREAMING_FEATURES as STREAMING_DEMO_FEATURES
from devstack._demo import load as load_demo
from devstack._demo import load_history as load_demo_history
from devstack._demo import load_streaming as load_streaming_demo
from devstack._monitoring import Targets, prometheus_config, rule_files, start_prometheus, start_pushgateway
from devstack._procs import (
    SERVER_SETTINGS,
    Proc,
    envoy_config,
    free_port,
    start_envoy,
    start_postgres,
    start_server,
    start_streaming_pipeline,
    start_tansu,
    start_valkey,
    start_valkey_cluster,
)
from devstack._ratelimit import RateLimit, with_rate_limit
from devstack._tls import EnvoyTls, with_tls

__all__ = [
    "DEMO_FEATURES",
    "SERVER_SETTINGS",
    "STREAMING_DEMO_FEATURES",
    "DevAuth",
    "EnvoyTls",
    "Proc",
    "RateLimit",
    "Targets",
    "dev_auth",
    "envoy_config",
    "free_port",
    "load_demo",
    "load_demo_history",
    "load_streaming_demo",
    "prometheus_config",
    "rule_files",
    "start_envoy",
    "start_postgres",
    "start_prometheus",
    "start_pushgateway",
    "start_server",
    "start_streaming_pipeline",
    "start_tansu",
    "start_valkey",
    "start_valkey_cluster",
    "with_rate_limit",
    "with_tls",
]
