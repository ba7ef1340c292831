"""The composition root: builds the whole server from one Settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf import descriptor
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

from server import _freshness, _metrics, _tracing, auth, core, offline, online
from server._health import HealthMonitor, Probe
from server._rpc import service_handler, unary_methods
from server._settings import Settings
from server._tls import server_credentials
from server.core.postgres import connect_and_migrate, create_pool
from server.registry import PostgresRegistryStore, RegistryServicer

_log = logging.getLogger(__name__)
REGISTRY_SERVICE = core.REGISTRY_SERVICE.full_name
FEATURE_STORE_SERVICE = core.FEATURE_STORE_SERVICE.full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass
class App:
    """A started server and what it owns."""

    server: grpc.aio.Server
    health: health_aio.HealthServicer
    pools: list[asyncpg.Pool]
    online_store: online.RedisOnlineStore
    port: int
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    tracer_provider: TracerProvider | None = None
    probes: grpc.aio.Server | None = None  # the plaintext health port (health_port), if any
    forwarder: online.WriteForwarder | None = None  # writes passed to the write workers, if any

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let in-flight calls finish within `grace`, release the stores."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.probes is not None:
            await self.probes.stop(0)
        if self.forwarder is not None:
            await self.forwarder.close()
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.online_store.close()
        for pool in self.pools:
            await pool.close()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()  # exports what is still buffered


def _server(settings: Settings) -> grpc.aio.Server:
    most = settings.max_concurrent_rpcs or None  # beyond it gRPC answers RESOURCE_EXHAUSTED
    return grpc.aio.server(options=_server_options(settings), maximum_concurrent_rpcs=most)


_AUTH_MODES = ("off", "optional", "required")


def _authenticator(settings: Settings) -> auth.Authenticator | None:
    """The credentials auth_mode accepts, None when it is off; a bad combination stops the start."""
    if settings.auth_mode not in _AUTH_MODES:
        raise SystemExit(f"auth_mode {settings.auth_mode!r} is not one of {', '.join(_AUTH_MODES)}")
    if settings.auth_mode == "off":
        return None
    if not (settings.auth_jwks_file or settings.auth_api_keys_file):
        raise SystemExit(f"auth_mode {settings.auth_mode} needs auth_jwks_file or auth_api_keys_file (or both)")
    jwts = None
    if settings.auth_jwks_file:
        if not (settings.auth_issuer and settings.auth_audience):
            raise SystemExit("auth_jwks_file needs auth_issuer and auth_audience: tokens are checked against both")
        jwts = auth.JwtVerifier(
            Path(settings.auth_jwks_file),
            settings.auth_issuer,
            settings.auth_audience,
            leeway=settings.auth_leeway,
            roles_claim=settings.auth_roles_claim,
        )
    api_keys = auth.ApiKeys(Path(settings.auth_api_keys_file)) if settings.auth_api_keys_file else None
    return auth.Authenticator(jwts, api_keys)


def _auth_guard(settings: Settings, authenticator: auth.Authenticator) -> auth.Guard:
    anonymous = auth.ROLES.get(settings.auth_anonymous_role)
    if anonymous is None:
        raise SystemExit(f"auth_anonymous_role {settings.auth_anonymous_role!r} is not one of {', '.join(auth.ROLES)}")
    required = settings.auth_mode == "required"
    return auth.Guard(authenticator, auth.METHOD_ROLES, required=required, anonymous=anonymous)


def _guarded(
    guard: auth.Guard | None,
    service: descriptor.ServiceDescriptor,
    methods: dict[str, grpc.RpcMethodHandler],  # type: ignore[type-arg]
) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """The service's handler, each method checked by `guard` (auth off: None, unchecked)."""
    if guard is not None:
        methods = {name: guard.wrap(f"/{service.full_name}/{name}", handler) for name, handler in methods.items()}
    return service_handler(service, methods)


def _check_private(folder: Path) -> None:
    """A write worker serves without authentication: only on a socket in a folder of this user's
    that no one else may enter (the supervisor makes one with mkdtemp)."""
    try:
        info = folder.stat()
    except OSError:
        raise SystemExit(f"write_worker_socket: its folder {folder} does not exist") from None
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SystemExit(f"write_worker_socket: its folder {folder} must be this user's, mode 0700")


def _tls(settings: Settings) -> grpc.ServerCredentials | None:
    """The port's TLS credentials, None for plaintext; a half-given setting stops the start."""
    if not (settings.tls_cert_file or settings.tls_key_file or settings.tls_client_ca_file):
        return None
    if not (settings.tls_cert_file and settings.tls_key_file):
        raise SystemExit("TLS needs both tls_cert_file and tls_key_file (tls_client_ca_file adds mTLS)")
    return server_credentials(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)


def _server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def _observe_query(query: str, seconds: float, error: BaseException | None) -> None:
    _metrics.observe_postgres(query, seconds, error)
    _tracing.record_postgres(query, seconds, error)


def _pool_hooks(settings: Settings, pool: str) -> dict[str, Any]:
    """The pool's hooks: statement times and errors (metrics, spans), waits for a connection (metrics)."""
    hooks: dict[str, Any] = {}
    if settings.metrics or _tracing.enabled:
        hooks["on_query"] = _observe_query
    if settings.metrics:
        hooks["on_wait"] = _metrics.POOL_WAIT_SECONDS.labels(pool).observe
    return hooks


async def _registry(settings: Settings) -> tuple[asyncpg.Pool, PostgresRegistryStore]:
    pool = await connect_and_migrate(
        settings.postgres_dsn,
        timeout=settings.startup_timeout,
        min_size=settings.postgres_pool_min,
        max_size=settings.postgres_pool_max,
        command_timeout=settings.postgres_timeout,
        acquire_timeout=settings.postgres_acquire_timeout,
        **_pool_hooks(settings, "main"),
    )
    return pool, PostgresRegistryStore(pool)


async def _read_pool(settings: Settings) -> asyncpg.Pool:
    """The history and training reads' own pool: long reads cannot hold the writes' connections."""
    return await create_pool(
        settings.postgres_dsn,
        min_size=min(settings.postgres_pool_min, settings.postgres_read_pool_max),
        max_size=settings.postgres_read_pool_max,
        command_timeout=settings.postgres_timeout,
        acquire_timeout=settings.postgres_acquire_timeout,
        **_pool_hooks(settings, "read"),
    )


def _sampled_gauges(pools: dict[str, asyncpg.Pool], store: online.RedisOnlineStore, catalog: online.Catalog) -> None:
    """Gauges read at scrape time: pool use, Redis requests waiting, the plan cache, the registry's definitions."""

    def connections() -> list[tuple[tuple[str, str], float]]:
        rows: list[tuple[tuple[str, str], float]] = []
        for name, pool in pools.items():
            size, idle = pool.get_size(), pool.get_idle_size()
            rows += [((name, "in_use"), size - idle), ((name, "idle"), idle), ((name, "max"), pool.get_max_size())]
        return rows

    sampled = _metrics.SAMPLED
    sampled.set(
        "featurestore_postgres_pool_connections",
        "PostgreSQL connections of a pool, by state (in_use, idle, max).",
        ["pool", "state"],
        connections,
    )
    sampled.set(
        "featurestore_redis_requests_pending",
        "Requests sent to Redis and not answered yet (standalone Redis).",
        [],
        lambda: [((), store.pending())],
    )
    sampled.set(
        "featurestore_plan_cache_plans",
        "Request shapes whose resolved plans are cached.",
        [],
        lambda: [((), catalog.plan_cache_size()[0])],
    )
    sampled.set(
        "featurestore_plan_cache_features",
        "Features held over all cached plans.",
        [],
        lambda: [((), catalog.plan_cache_size()[1])],
    )
    sampled.set(
        "featurestore_registry_definitions",
        "Definitions in the serving snapshot, by entity type and kind (feature, feature_group).",
        ["entity_type", "kind"],
        lambda: [((t, kind), n) for t, kind, n in catalog.definitions()],
    )


def _limits(settings: Settings) -> core.Limits:
    try:
        floor = datetime.fromisoformat(settings.min_event_time.replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(f"min_event_time {settings.min_event_time!r} is not an ISO 8601 time") from None
    return core.Limits(
        max_values=settings.max_request_values,
        max_list_items=settings.max_list_items,
        max_stream_values=settings.max_stream_values,
        max_stream_seconds=settings.max_stream_seconds,
        max_clock_skew=settings.max_clock_skew,
        min_event_seconds=int((floor if floor.tzinfo else floor.replace(tzinfo=UTC)).timestamp()),
        max_message_bytes=settings.max_message_bytes,
    )


async def migrate_only(settings: Settings) -> None:
    """Apply pending migrations and return (for a pre-rollout job)."""
    pool, _ = await _registry(settings)
    await pool.close()


def _online(settings: Settings) -> online.RedisOnlineStore:
    client = online.connect(
        settings.redis_url,
        cluster=settings.redis_cluster,
        connections=settings.redis_connections,
        timeout=settings.redis_timeout,
    )
    return online.RedisOnlineStore(
        client,
        ttl_seconds=settings.online_ttl,
        chunk_values=settings.redis_chunk_values,
        write_chunk_values=settings.redis_write_chunk_values,
        chunks_in_flight=settings.redis_chunks_in_flight,
    )


async def start(
    settings: Settings,
    tracing: _tracing.TracingSettings | None = None,
    span_exporter: SpanExporter | None = None,
) -> App:
    """Connect the stores, register the services and start listening.

    `tracing`: what the OTEL_* variables ask for (off if None); `span_exporter` turns tracing
    on with that exporter instead (tests: an in-memory one).
    """
    limits = _limits(settings)
    _metrics.set_enabled(settings.metrics)
    provider = _tracing.configure(tracing or _tracing.TracingSettings(), span_exporter)
    authenticator = _authenticator(settings)  # before any store: a bad setting stops the start at once
    guard = _auth_guard(settings, authenticator) if authenticator else None
    credentials = _tls(settings)
    write_worker = bool(settings.write_worker_socket)
    if write_worker:  # its private socket is reached only by the serving processes, which checked the caller
        _check_private(Path(settings.write_worker_socket).parent)
        authenticator, guard, credentials = None, None, None
    pool, registry_store = await _registry(settings)
    read_pool = await _read_pool(settings)
    online_store = _online(settings)
    catalog = online.Catalog()
    refresher = online.CatalogRefresher(catalog, registry_store, settings.registry_refresh_interval)
    await refresher.refresh()

    server = _server(settings)
    registry = RegistryServicer(registry_store, after_write=refresher.refresh_quietly)
    history = offline.PostgresHistoryStore(
        pool, read_pool, max_new_partitions=settings.max_new_partitions, statement_timeout=settings.postgres_timeout
    )
    await history.create_upcoming_partitions()
    freshness = _freshness.FreshnessTracker(pool, catalog, settings.freshness_interval)
    sink = _freshness.NotingSink(history, freshness) if settings.metrics or _tracing.enabled else history
    online_servicer = online.OnlineServicer(catalog, online_store, sink, limits)
    history_servicer = offline.HistoryServicer(catalog, history, limits)
    training_servicer = offline.TrainingServicer(
        catalog, history, limits, settings.max_concurrent_training, settings.postgres_acquire_timeout
    )
    feature_store = {
        **online.methods(online_servicer),
        **offline.history_methods(history_servicer),
        **offline.training_methods(training_servicer),
    }
    forwarder = None
    if settings.write_forward_sockets:  # writes run in the write workers (online/_forward.py)
        sockets = [path for path in settings.write_forward_sockets.split(",") if path]
        forwarder = online.WriteForwarder(sockets, settings.max_message_bytes)
        feature_store.update(forwarder.methods())
    if write_worker:  # its socket serves the two write methods only (and health), unauthenticated
        writes = {name: feature_store[name] for name in ("WriteFeatures", "PushFeatures")}
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(core.FEATURE_STORE_SERVICE.full_name, writes),)
        )
    else:
        server.add_generic_rpc_handlers(
            (
                _guarded(guard, core.REGISTRY_SERVICE, unary_methods(core.REGISTRY_SERVICE, registry)),
                _guarded(guard, core.FEATURE_STORE_SERVICE, feature_store),
            )
        )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if settings.reflection and not write_worker:
        services = [REGISTRY_SERVICE, FEATURE_STORE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(services, server)

    stores: dict[str, Probe] = {"postgresql": registry_store.ping, "redis": online_store.ping}
    if forwarder is not None:  # watched (featurestore_store_up), not part of readiness: reads do not need them
        stores["write_workers"] = forwarder.ping
    monitor = HealthMonitor(
        health,
        stores,
        {"": ["postgresql", "redis"], REGISTRY_SERVICE: ["postgresql"], FEATURE_STORE_SERVICE: ["redis"]},
        settings.health_interval,
    )
    await monitor.check_once()
    if settings.metrics:
        _sampled_gauges({"main": pool, "read": read_pool}, online_store, catalog)
        _freshness.register(freshness)
        with contextlib.suppress(Exception):  # the first load; the loop retries
            await freshness.sync()
    if settings.metrics and settings.metrics_port:
        try:
            _metrics.serve(settings.metrics_host, settings.metrics_port)
        except OSError as err:  # a write worker still writes without its /metrics (a port taken)
            if not write_worker:
                raise
            _log.warning("write worker: /metrics not served on port %d: %s", settings.metrics_port, err)
    address = f"unix:{settings.write_worker_socket}" if write_worker else f"{settings.host}:{settings.port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    await server.start()
    if write_worker:
        _log.info("write worker serving gRPC on %s", address)
    else:
        transport = ("mTLS" if settings.tls_client_ca_file else "TLS") if credentials else "plaintext"
        _log.info("serving gRPC on %s:%d (%s, auth %s)", settings.host, port, transport, settings.auth_mode)
    probes = await _probe_server(settings, health) if settings.health_port and not write_worker else None
    tasks = [
        asyncio.create_task(monitor.run()),
        asyncio.create_task(refresher.run()),
        asyncio.create_task(history.maintain_partitions()),
    ]
    if settings.metrics:
        tasks.append(asyncio.create_task(freshness.run()))
    if authenticator:
        tasks.append(asyncio.create_task(authenticator.watch(settings.auth_reload_interval)))
    if settings.history_retention_days > 0:
        retention = timedelta(days=settings.history_retention_days)
        tasks.append(asyncio.create_task(history.enforce_retention(retention)))
    return App(server, health, [pool, read_pool], online_store, port, tasks, provider, probes, forwarder)


async def _probe_server(settings: Settings, health: health_aio.HealthServicer) -> grpc.aio.Server:
    """grpc.health.v1 alone, plaintext, on health_port: the kubelet's gRPC probes speak no TLS."""
    probes = grpc.aio.server(options=[("grpc.so_reuseport", 1)], maximum_concurrent_rpcs=16)
    health_pb2_grpc.add_HealthServicer_to_server(health, probes)
    port = probes.add_insecure_port(f"{settings.host}:{settings.health_port}")
    await probes.start()
    _log.info("serving gRPC health alone on %s:%d (plaintext, for probes)", settings.host, port)
    return probes
