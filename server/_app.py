"""The composition root: builds the whole server from one Settings."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg
import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from featurestore.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
from server._health import HealthMonitor
from server._postgres import connect_and_migrate
from server._settings import Settings
from server.registry import PostgresRegistryStore, RegistryServicer

_log = logging.getLogger(__name__)
REGISTRY_SERVICE = registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name


@dataclass
class App:
    """A started server and what it owns."""

    server: grpc.aio.Server
    health: health_aio.HealthServicer
    pool: asyncpg.Pool
    monitor_task: asyncio.Task[None]
    port: int

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let in-flight calls finish within `grace`, release the stores."""
        await self.health.enter_graceful_shutdown()
        self.monitor_task.cancel()
        await self.server.stop(grace)
        await self.pool.close()


def _server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


async def start(settings: Settings) -> App:
    """Connect the stores, register the services and start listening."""
    pool = await connect_and_migrate(
        settings.postgres_dsn,
        timeout=settings.startup_timeout,
        min_size=settings.postgres_pool_min,
        max_size=settings.postgres_pool_max,
        command_timeout=settings.postgres_timeout,
    )
    registry_store = PostgresRegistryStore(pool)
    server = grpc.aio.server(options=_server_options(settings))
    registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(registry_store), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    service_names = [REGISTRY_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    reflection.enable_server_reflection([*service_names, reflection.SERVICE_NAME], server)
    monitor = HealthMonitor(
        health, {"postgresql": registry_store.ping}, {REGISTRY_SERVICE: ["postgresql"]}, settings.health_interval
    )
    await monitor.check_once()
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    _log.info("serving gRPC on %s:%d", settings.host, port)
    return App(server, health, pool, asyncio.create_task(monitor.run()), port)
