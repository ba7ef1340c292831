"""gRPC health checking driven by probes of the backing stores.

Each served service depends on some stores; it is SERVING while all of them
answer their probe, NOT_SERVING otherwise. The overall status ("") covers
every store unless `dependencies` names its stores too (a store that is only
watched, for `featurestore_store_up`). Probes run in the background, never on a request's path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2

from server._metrics import STORE_UP

_log = logging.getLogger(__name__)
Probe = Callable[[], Awaitable[None]]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthMonitor:
    """Probes stores every `interval` seconds and publishes per-service health."""

    def __init__(
        self,
        servicer: health_aio.HealthServicer,
        probes: Mapping[str, Probe],
        dependencies: Mapping[str, Sequence[str]],
        interval: float,
    ) -> None:
        self._servicer = servicer
        self._probes = probes
        self._dependencies = {"": list(probes), **dependencies}
        self._interval = interval
        self._healthy: dict[str, bool] = {}

    async def _probe(self, name: str) -> bool:
        try:
            await asyncio.wait_for(self._probes[name](), timeout=max(self._interval, 0.5))
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means unhealthy
            if self._healthy.get(name, True):
                _log.warning("%s is unhealthy: %s", name, exc)
            return False
        if not self._healthy.get(name, True):
            _log.info("%s is healthy again", name)
        return True

    async def check_once(self) -> None:
        """Probe every store once and publish the resulting statuses."""
        results = await asyncio.gather(*(self._probe(name) for name in self._probes))
        self._healthy = dict(zip(self._probes, results, strict=True))
        for store, ok in self._healthy.items():
            STORE_UP.labels(store).set(1 if ok else 0)
        for service, stores in self._dependencies.items():
            ok = all(self._healthy[s] for s in stores)
            await self._servicer.set(service, SERVING if ok else NOT_SERVING)

    async def run(self) -> None:
        """Probe forever; cancel the task to stop."""
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval)
