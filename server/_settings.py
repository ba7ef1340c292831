"""The server's configuration: one frozen Settings, read once at start-up.

Every field can be set by a flag (`--postgres-dsn`) or an environment
variable (`FEATURESTORE_POSTGRES_DSN`); a flag wins over the environment,
which wins over the local stack's file (`local_environment`: what `make up`
runs), which wins over the default. The pipelines and tools take their shared
flags from here too (`add_arguments`), so every tool speaks one vocabulary.
Nothing below the composition root reads the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "FEATURESTORE_"
LOCAL_ENV_FILE = Path(__file__).resolve().parent.parent / ".state" / "local.env"


@dataclass(frozen=True)
class Settings:
    """Configuration of one server process."""

    host: str = field(default="0.0.0.0", metadata={"help": "address the gRPC server binds"})  # noqa: S104
    port: int = field(default=50051, metadata={"help": "gRPC port"})
    postgres_dsn: str = field(
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        metadata={"help": "PostgreSQL connection string (registry and offline store)"},
    )
    postgres_pool_min: int = field(default=1, metadata={"help": "PostgreSQL pool: connections kept open"})
    postgres_pool_max: int = field(default=10, metadata={"help": "PostgreSQL pool: most connections"})
    postgres_read_pool_max: int = field(
        default=12,
        metadata={"help": "PostgreSQL pool for history and training reads: most connections (writes have their own)"},
    )
    postgres_acquire_timeout: float = field(
        default=2.0, metadata={"help": "seconds a call waits for a PostgreSQL connection, then UNAVAILABLE"}
    )
    postgres_timeout: float = field(default=5.0, metadata={"help": "seconds a PostgreSQL statement may take"})
    startup_timeout: float = field(default=30.0, metadata={"help": "seconds to wait for PostgreSQL at start-up"})
    redis_url: str = field(default="redis://127.0.0.1:6379/0", metadata={"help": "Redis/Valkey URL (online store)"})
    redis_cluster: bool = field(default=False, metadata={"help": "treat redis_url as a Redis Cluster seed node"})
    redis_connections: int = field(
        default=4, metadata={"help": "pipelined Redis connections per process (a cluster: 16x per node, pooled)"}
    )
    redis_timeout: float = field(default=0.5, metadata={"help": "seconds a Redis call may take"})
    redis_chunk_values: int = field(
        default=1000,
        metadata={"help": "most values one Redis read call (a script, or a pipeline of HMGETs) asks for"},
    )
    redis_write_chunk_values: int = field(
        default=250,
        metadata={"help": "most values one Redis write script call carries; larger writes are split"},
    )
    redis_chunks_in_flight: int = field(
        default=2, metadata={"help": "write script calls outstanding per process (on a connection of their own)"}
    )
    online_ttl: int = field(default=0, metadata={"help": "Redis TTL of an entity's key after a write; 0 = none"})
    max_request_values: int = field(
        default=100_000, metadata={"help": "most entities x features one read or write may hold"}
    )
    max_list_items: int = field(
        default=16_384,
        metadata={
            "help": "most items one list or embedding value of a write may hold (each is checked and encoded "
            "in one piece)"
        },
    )
    max_stream_values: int = field(
        default=1_000_000,
        metadata={"help": "most values one PushFeatures or StreamHistoricalFeatures call may carry in total"},
    )
    max_stream_seconds: float = field(
        default=600.0,
        metadata={"help": "longest a PushFeatures, StreamHistoricalFeatures or GetTrainingDataset call may run"},
    )
    max_concurrent_training: int = field(
        default=2, metadata={"help": "GetTrainingDataset calls run at once per process (each holds 4 connections)"}
    )
    max_concurrent_rpcs: int = field(
        default=1000, metadata={"help": "calls in progress per process; more get RESOURCE_EXHAUSTED; 0 = no limit"}
    )
    max_clock_skew: float = field(
        default=300.0, metadata={"help": "seconds an event time may lie ahead of the server's clock in a write"}
    )
    min_event_time: str = field(
        default="1970-01-01T00:00:00Z", metadata={"help": "earliest event time a write accepts (ISO 8601, UTC)"}
    )
    max_new_partitions: int = field(
        default=12, metadata={"help": "history partitions (months) one write may create; the rest exist ahead"}
    )
    history_retention_days: int = field(
        default=0, metadata={"help": "drop history partitions older than this many days; 0 keeps all"}
    )
    registry_refresh_interval: float = field(
        default=0.5, metadata={"help": "seconds between checks for registry changes (serving snapshot)"}
    )
    event_loop: str = field(default="uvloop", metadata={"help": "uvloop (faster) or asyncio"})
    metrics_host: str = field(
        default="127.0.0.1", metadata={"help": "address /metrics binds (loopback: scrape from the pod or host)"}
    )
    metrics_port: int = field(
        default=9464, metadata={"help": "Prometheus /metrics port (worker i of N uses port + i); 0 = off"}
    )
    metrics: bool = field(
        default=True,
        metadata={"help": "record metrics (false: nothing recorded or served; for measuring what they cost)"},
    )
    freshness_interval: float = field(
        default=15.0,
        metadata={"help": "seconds between updates of the feature freshness summary and its gauges"},
    )
    workers: int = field(default=1, metadata={"help": "server processes sharing the port (SO_REUSEPORT)"})
    write_workers: int = field(
        default=0,
        metadata={
            "help": "processes that run WriteFeatures and PushFeatures apart from the reads: the serving processes "
            "pass those calls to them over a private Unix socket, so no read waits behind a write's CPU work; "
            "0 = every process runs its own writes"
        },
    )
    write_nice: int = field(
        default=5,
        metadata={"help": "CPU niceness the write workers add to the server's own (0-19): reads get the CPU first"},
    )
    write_sched: str = field(
        default="other",
        metadata={
            "help": "CPU scheduling policy of the write workers: other (at write_nice), batch (at write_nice, never "
            "preempts a read on waking), idle (only CPU time nothing else wants: reads first, strictly)"
        },
    )
    write_metrics_port: int = field(
        default=0,
        metadata={"help": "/metrics port of the first write worker (the next: + 1); 0 = after the workers' ports"},
    )
    write_worker_socket: str = field(
        default="",
        metadata={"help": "set by the supervisor: this process is a write worker serving on this Unix socket only"},
    )
    write_forward_sockets: str = field(
        default="",
        metadata={"help": "set by the supervisor: the write workers' Unix sockets (comma-separated) to pass writes to"},
    )
    health_interval: float = field(default=1.0, metadata={"help": "seconds between dependency health probes"})
    shutdown_grace: float = field(default=10.0, metadata={"help": "seconds in-flight calls get on SIGTERM"})
    max_message_bytes: int = field(default=16 * 1024 * 1024, metadata={"help": "largest gRPC message accepted"})
    auth_mode: str = field(
        default="off",
        metadata={
            "help": "off (no checks; local only), optional (callers without a token get auth_anonymous_role) "
            "or required; a token presented is always verified (docs/security.md)"
        },
    )
    auth_jwks_file: str = field(
        default="", metadata={"help": "JWKS file of the identity provider's signing keys (re-read on change)"}
    )
    auth_issuer: str = field(default="", metadata={"help": "the `iss` a JWT must carry (needed with a JWKS)"})
    auth_audience: str = field(default="", metadata={"help": "the `aud` a JWT must carry (needed with a JWKS)"})
    auth_roles_claim: str = field(
        default="roles", metadata={"help": "JWT claim holding the caller's roles (a list, or a space-separated string)"}
    )
    auth_leeway: float = field(default=30.0, metadata={"help": "seconds of clock skew allowed on exp, nbf and iat"})
    auth_api_keys_file: str = field(
        default="", metadata={"help": "file of service accounts' API key hashes and roles (re-read on change)"}
    )
    auth_anonymous_role: str = field(
        default="reader", metadata={"help": "role of callers without a token when auth_mode is optional (or none)"}
    )
    auth_reload_interval: float = field(
        default=5.0, metadata={"help": "seconds between checks of the JWKS and API key files for changes"}
    )
    tls_cert_file: str = field(
        default="",
        metadata={"help": "PEM certificate chain: the gRPC port serves TLS only (re-read on change); empty: plaintext"},
    )
    tls_key_file: str = field(default="", metadata={"help": "PEM private key of tls_cert_file"})
    tls_client_ca_file: str = field(
        default="",
        metadata={"help": "PEM CA: clients must present a certificate it signed (mTLS); needs tls_cert_file"},
    )
    health_port: int = field(
        default=0,
        metadata={
            "help": "a second port serving grpc.health.v1 alone, in plaintext (the kubelet's gRPC probes speak "
            "no TLS); 0 = none"
        },
    )
    reflection: bool = field(
        default=True, metadata={"help": "serve gRPC reflection (the API's schema, to anyone); production: false"}
    )
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})
    log_format: str = field(default="json", metadata={"help": "json (one object per line, with the trace id) or text"})
    migrate_only: bool = field(default=False, metadata={"help": "apply pending SQL migrations, then exit"})

    @classmethod
    def load(cls, argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
        """Settings from command-line flags over environment variables over defaults."""
        parser = argparse.ArgumentParser(prog="featurestore-server", description="Feature store gRPC server")
        add_arguments(parser, [f.name for f in dataclasses.fields(cls)], environ)
        return cls(**vars(parser.parse_args(list(argv))))


def add_arguments(parser: argparse.ArgumentParser, names: Sequence[str], environ: Mapping[str, str]) -> None:
    """Add the flags of these Settings fields to `parser`: the one vocabulary of every tool.

    `--postgres-dsn` is read from FEATURESTORE_POSTGRES_DSN when the flag is not given; a
    boolean flag alone means true (`--redis-cluster`), or takes a value (`--redis-cluster false`).
    """
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    for name in names:
        f, env = fields[name], ENV_PREFIX + name.upper()
        default: Any = _parse(f.type, environ[env], env) if env in environ else f.default
        extra: dict[str, Any] = {"nargs": "?", "const": True} if str(f.type) == "bool" else {}
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=_TYPES[str(f.type)],
            default=default,
            help=f"{f.metadata['help']} (env {env}; default {f.default!r})",
            **extra,
        )


def local_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The local stack's settings, as `make up` wrote them (FEATURESTORE_NAME=value lines), or none.

    Command-line tools read them below the real environment, so their defaults find the
    stack `make up` runs: FEATURESTORE_LOCAL_ENV names the file, else `.state/local.env`
    in the checkout. Without the file (an installed package, a container) this is empty.
    """
    path = Path(environ.get("FEATURESTORE_LOCAL_ENV", LOCAL_ENV_FILE))
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs if key.strip().startswith(ENV_PREFIX)}


def _bool(raw: str) -> bool:
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


_TYPES: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": _bool}


def _parse(type_name: Any, raw: str, env: str) -> Any:
    try:
        return _TYPES[str(type_name)](raw)
    except ValueError:
        raise SystemExit(f"{env}={raw!r} is not a valid {type_name}") from None
