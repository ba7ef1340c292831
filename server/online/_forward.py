"""Writes handed to the write workers, so that a read never waits behind a write in its process.

With `--write-workers N` (see server/__main__.py) the serving processes do not run
WriteFeatures and PushFeatures themselves: each call goes, as the bytes it arrived as,
to a write worker process over a Unix socket private to the server, and the worker's
answer (or its error, with its details) comes back as it is. The serving process
still authenticates and authorizes the call first (the guard wraps these handlers);
the worker trusts its socket. What the serving process spends on a forwarded write is
gRPC receiving and sending its bytes (measured: ~0.27 µs of CPU a value, 2.7 ms for a
10,000-value request of 257 KB, on a 2-core machine), instead of the
validation, encoding and store work (7-9 µs a value on the same machine) during which
no read in its loop could run. The workers also run at a lower CPU priority
(`--write-nice`): when reads and writes both want the CPU, reads get it first.

A worker that is down (restarting) makes the call UNAVAILABLE at once: writes are
idempotent, so the client retries. `ping` is the serving process's probe of its
write workers: `featurestore_store_up{store="write_workers"}` (not readiness: reads
do not need them).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2

from server.core.errors import ServiceError

Context = grpc.aio.ServicerContext[Any, Any]
_SERVICE = "/featurestore.serving.v1.FeatureStoreService/"
_NOT_FORWARDED = frozenset({"user-agent", "te", "content-type", "host", "accept-encoding"})
_DETAILS = "grpc-status-details-bin"
_HEALTH_REQUEST = health_pb2.HealthCheckRequest()
_UNREACHABLE = ServiceError(
    grpc.StatusCode.UNAVAILABLE, "WRITE_WORKER_UNAVAILABLE", "the write worker is unavailable (restarting?); retry"
)


def _metadata(context: Context) -> tuple[tuple[str, Any], ...]:
    """The caller's metadata the worker needs (trace context, and whatever else it sent), minus transport headers."""
    return tuple(
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if key not in _NOT_FORWARDED and not key.startswith((":", "grpc-"))
    )


class WriteForwarder:
    """WriteFeatures and PushFeatures handlers that pass each call to a write worker (round robin)."""

    def __init__(self, sockets: Sequence[str], max_message_bytes: int) -> None:
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # A local socket: retry connecting every 0.1-1 s, so writes work again within a second
            # of a restarted worker listening (gRPC's default backoff grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self._channels = [grpc.aio.insecure_channel(f"unix:{path}", options=options) for path in sockets]
        unary = [c.unary_unary(_SERVICE + "WriteFeatures", None, None) for c in self._channels]
        pushes = [c.stream_unary(_SERVICE + "PushFeatures", None, None) for c in self._channels]
        self._checks = [
            c.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            for c in self._channels
        ]
        self._unary = itertools.cycle(unary)
        self._pushes = itertools.cycle(pushes)

    async def ping(self) -> None:
        """Succeeds when every write worker answers a health check (the stores behind it are probed by this
        process itself); raises otherwise."""
        await asyncio.gather(*(check(_HEALTH_REQUEST, timeout=2.0) for check in self._checks))

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)

    async def WriteFeatures(self, request: bytes, context: Context) -> bytes:
        return await _forward(next(self._unary), request, context)

    async def PushFeatures(self, requests: AsyncIterator[bytes], context: Context) -> bytes:
        return await _forward(next(self._pushes), requests, context)

    def methods(self) -> dict[str, grpc.RpcMethodHandler]:  # type: ignore[type-arg]
        """The two handlers, bytes in and out (the worker parses and checks the request)."""
        return {
            "WriteFeatures": grpc.unary_unary_rpc_method_handler(self.WriteFeatures),
            "PushFeatures": grpc.stream_unary_rpc_method_handler(self.PushFeatures),
        }


async def _forward(call: Any, request: Any, context: Context) -> bytes:
    """The worker's answer to `request` (bytes, or an iterator of them), or its error relayed."""
    try:
        response: bytes = await call(request, timeout=context.time_remaining(), metadata=_metadata(context))
    except grpc.aio.AioRpcError as err:
        await _relay(err, context)
    return response


async def _relay(err: grpc.aio.AioRpcError, context: Context) -> NoReturn:
    """Abort with the worker's status and details; a failure to reach it is UNAVAILABLE without internals."""
    metadata: Any = err.trailing_metadata() or ()
    trailing: tuple[tuple[str, str | bytes], ...] = tuple((str(key), value) for key, value in metadata)
    if any(key == _DETAILS for key, _ in trailing):  # the worker answered: its own, complete status
        await context.abort(err.code(), err.details() or "", trailing)
    if err.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        await context.abort(err.code(), "the write did not finish within the call's deadline")
    if err.code() != grpc.StatusCode.UNAVAILABLE:  # gRPC's own (message size, ...): its code, not its text
        await context.abort(err.code(), "the write failed in the write worker")
    await context.abort_with_status(_UNREACHABLE.to_status())  # type: ignore[attr-defined]
    raise AssertionError("abort_with_status returned")  # pragma: no cover
