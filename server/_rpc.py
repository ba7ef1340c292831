"""Glue between servicer methods and gRPC: parsing, timing, and domain errors as rich statuses.

Requests are parsed by `parser`, which turns bytes that are not a valid message (bad
wire format, a string field that is not UTF-8) into an `Undecodable` request instead of
raising: a deserializer that raises makes gRPC answer UNKNOWN ("Unexpected <class
DecodeError>", HTTP 500 through the gateway). `rpc` and `rpc_stream` answer an
Undecodable request INVALID_ARGUMENT with a google.rpc.Status naming the problem.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor, message_factory
from google.protobuf.message import DecodeError, Message

from server import _metrics, _tracing
from server._metrics import RPC_ERRORS, RPC_SECONDS
from server.core.errors import FieldViolation, ServiceError, invalid_argument

_log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
S = TypeVar("S")
Handler = Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]


class Undecodable:
    """A request whose bytes are not a valid message of its type."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def error(self) -> ServiceError:
        problem = f"is not a valid {self.type_name} (malformed protobuf, or a string field that is not UTF-8)"
        return invalid_argument([FieldViolation("request", problem)])


def parser(
    message_class: type[Message], type_name: str | None = None, from_string: Callable[[bytes], Any] | None = None
) -> Callable[[bytes], Any]:
    """A request deserializer that never raises: bad bytes become an Undecodable request (of
    `type_name`, by default the message's). `from_string`: what parses (default: the class's FromString)."""
    from_string = from_string or message_class.FromString
    type_name = type_name or message_class.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return from_string(data)
        except (DecodeError, UnicodeDecodeError, RuntimeWarning, ValueError):
            return Undecodable(type_name)

    return parse


def parsed(request: Req) -> Req:
    """`request`, or INVALID_ARGUMENT if it could not be parsed (for streamed requests)."""
    if isinstance(request, Undecodable):
        raise request.error()
    return request


def unary_unary(
    behavior: Any,
    request: type[Message],
    response: type[Message] | None = None,
    type_name: str | None = None,
    from_string: Callable[[bytes], Any] | None = None,
) -> Any:
    """A method handler whose requests go through `parser`; `response` None: the method returns bytes."""
    serialize = None if response is None else response.SerializeToString
    return grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=parser(request, type_name, from_string), response_serializer=serialize
    )


def unary_stream(behavior: Any, request: type[Message]) -> Any:
    """A server-streaming handler whose responses are bytes."""
    return grpc.unary_stream_rpc_method_handler(behavior, request_deserializer=parser(request))


def stream_unary(
    behavior: Any,
    request: type[Message],
    response: type[Message],
    type_name: str | None = None,
    from_string: Callable[[bytes], Any] | None = None,
) -> Any:
    """A client-streaming handler; its method checks each request with `parsed`."""
    deserialize = parser(request, type_name, from_string)
    return grpc.stream_unary_rpc_method_handler(
        behavior, request_deserializer=deserialize, response_serializer=response.SerializeToString
    )


def service_handler(
    service: descriptor.ServiceDescriptor,
    methods: dict[str, grpc.RpcMethodHandler],  # type: ignore[type-arg]
) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """The one handler of `service`: every method it declares must be among `methods`, and nothing else."""
    declared = {method.name for method in service.methods}
    if declared != set(methods):
        missing, unknown = sorted(declared - set(methods)), sorted(set(methods) - declared)
        raise RuntimeError(f"{service.full_name}: methods missing {missing}, not in the service {unknown}")
    return grpc.method_handlers_generic_handler(service.full_name, methods)


def unary_methods(service: descriptor.ServiceDescriptor, servicer: object) -> dict[str, grpc.RpcMethodHandler]:  # type: ignore[type-arg]
    """Handlers of every (unary) method of `service`, calling the same-named methods of `servicer`.

    Used instead of the generated add_*_to_server, whose deserializers raise on bad bytes.
    """
    methods = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        methods[method.name] = unary_unary(getattr(servicer, method.name), request, response)
    return methods


def _report(name: str, err: ServiceError) -> grpc.Status:
    if _metrics.enabled:
        RPC_ERRORS.labels(name, err.code.name).inc()
    if err.code is grpc.StatusCode.UNAVAILABLE:
        _log.warning("%s: %s", name, err.message)
    return err.to_status()


def _internal(name: str) -> ServiceError:
    """INTERNAL for an unexpected exception (call inside its `except`): the traceback goes to the log only."""
    _log.exception("%s failed unexpectedly", name)
    return ServiceError(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error (the server logged it)")


def rpc(method: Handler[S, Req, Resp]) -> Handler[S, Req, Resp]:
    """Time `method`, and report a ServiceError it raises as its gRPC status with details."""
    name = method.__name__
    observe = RPC_SECONDS.labels(name).observe

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        started = time.perf_counter()
        traced = _tracing.start_rpc(name, context.invocation_metadata()) if _tracing.enabled else None
        code: str | None = "UNKNOWN"
        try:
            if type(request) is Undecodable:
                raise request.error()  # type: ignore[attr-defined]
            response = await method(self, request, context)
            code = None
            return response
        except ServiceError as err:
            code = err.code.name
            await context.abort_with_status(_report(name, err))  # type: ignore[attr-defined]
            raise AssertionError("abort_with_status returned") from err  # pragma: no cover
        except grpc.aio.AbortError:
            raise
        except Exception as err:  # a bug: logged here, never its text to the caller (gRPC would send it)
            code = "INTERNAL"
            await context.abort_with_status(_report(name, _internal(name)))  # type: ignore[attr-defined]
            raise AssertionError("abort_with_status returned") from err  # pragma: no cover
        finally:
            if _metrics.enabled:
                observe(time.perf_counter() - started)
            if traced is not None:
                _tracing.end_rpc(*traced, code)

    return wrapper


StreamHandler = Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]


def rpc_stream(method: StreamHandler[S, Req, Resp]) -> StreamHandler[S, Req, Resp]:
    """`rpc` for server-streaming methods (async generators)."""

    name = method.__name__
    observe = RPC_SECONDS.labels(name).observe

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Resp]:
        started = time.perf_counter()
        traced = _tracing.start_rpc(name, context.invocation_metadata()) if _tracing.enabled else None
        code: str | None = "UNKNOWN"
        try:
            if type(request) is Undecodable:
                raise request.error()  # type: ignore[attr-defined]
            async for response in method(self, request, context):
                yield response
            code = None
        except ServiceError as err:
            code = err.code.name
            await context.abort_with_status(_report(name, err))  # type: ignore[attr-defined]
        except grpc.aio.AbortError:
            raise
        except Exception:  # noqa: BLE001  # a bug: logged, never its text to the caller
            code = "INTERNAL"
            await context.abort_with_status(_report(name, _internal(name)))  # type: ignore[attr-defined]
        except (GeneratorExit, asyncio.CancelledError):
            code = "CANCELLED"
            raise
        finally:
            if _metrics.enabled:
                observe(time.perf_counter() - started)
            if traced is not None:
                _tracing.end_rpc(*traced, code)

    return wrapper
