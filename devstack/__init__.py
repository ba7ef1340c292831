"""The local stack: real PostgreSQL, Valkey, server and Envoy on loopback (for `make up` and tests).

Every server comes from a PyPI wheel; `start_*` start one as a child process and wait until
it answers; the demo definitions and data are loaded by `load_demo` / `load_demo_history`.
"""

from devstack._demo import FEATURES as DEMO_FEATURES
from devstack._demo import load as load_demo
from devstack._demo import load_history as load_demo_history
from devstack._procs import (
    SERVER_SETTINGS,
    Proc,
    envoy_config,
    free_port,
    start_envoy,
    start_postgres,
    start_server,
    start_valkey,
    start_valkey_cluster,
)
from devstack._ratelimit import RateLimit, with_rate_limit
from devstack._tls import EnvoyTls, with_tls

__all__ = [
    "DEMO_FEATURES",
    "SERVER_SETTINGS",
    "EnvoyTls",
    "Proc",
    "RateLimit",
    "envoy_config",
    "free_port",
    "load_demo",
    "load_demo_history",
    "start_envoy",
    "start_postgres",
    "start_server",
    "start_valkey",
    "start_valkey_cluster",
    "with_rate_limit",
    "with_tls",
]
