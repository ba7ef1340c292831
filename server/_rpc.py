"""Glue between servicer methods and gRPC: timing, and domain errors as rich statuses."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from server._errors import ServiceError
from server._metrics import RPC_ERRORS, RPC_SECONDS

_log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
S = TypeVar("S")
Handler = Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]


def _report(name: str, err: ServiceError) -> grpc.Status:
    RPC_ERRORS.labels(name, err.code.name).inc()
    if err.code is grpc.StatusCode.UNAVAILABLE:
        _log.warning("%s: %s", name, err.message)
    return err.to_status()


def rpc(method: Handler[S, Req, Resp]) -> Handler[S, Req, Resp]:
    """Time `method`, and report a ServiceError it raises as its gRPC status with details."""
    name = method.__name__
    observe = RPC_SECONDS.labels(name).observe

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        started = time.perf_counter()
        try:
            return await method(self, request, context)
        except ServiceError as err:
            await context.abort_with_status(_report(name, err))  # type: ignore[attr-defined]
            raise AssertionError("abort_with_status returned") from err  # pragma: no cover
        finally:
            observe(time.perf_counter() - started)

    return wrapper


StreamHandler = Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]


def rpc_stream(method: StreamHandler[S, Req, Resp]) -> StreamHandler[S, Req, Resp]:
    """`rpc` for server-streaming methods (async generators)."""

    name = method.__name__
    observe = RPC_SECONDS.labels(name).observe

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Resp]:
        started = time.perf_counter()
        try:
            async for response in method(self, request, context):
                yield response
        except ServiceError as err:
            await context.abort_with_status(_report(name, err))  # type: ignore[attr-defined]
        finally:
            observe(time.perf_counter() - started)

    return wrapper
