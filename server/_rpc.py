"""Glue between servicer methods and gRPC: domain errors become rich statuses."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from server._errors import ServiceError

_log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
S = TypeVar("S")
Handler = Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]


def rpc(method: Handler[S, Req, Resp]) -> Handler[S, Req, Resp]:
    """Report a ServiceError raised by `method` as its gRPC status with details."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await method(self, request, context)
        except ServiceError as err:
            if err.code is grpc.StatusCode.UNAVAILABLE:
                _log.warning("%s: %s", method.__name__, err.message)
            await context.abort_with_status(err.to_status())  # type: ignore[attr-defined]
            raise AssertionError("abort_with_status returned") from err  # pragma: no cover

    return wrapper


StreamHandler = Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]


def rpc_stream(method: StreamHandler[S, Req, Resp]) -> StreamHandler[S, Req, Resp]:
    """`rpc` for server-streaming methods (async generators)."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Resp]:
        try:
            async for response in method(self, request, context):
                yield response
        except ServiceError as err:
            await context.abort_with_status(err.to_status())  # type: ignore[attr-defined]

    return wrapper
