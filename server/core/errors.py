"""Domain errors and their translation into rich gRPC statuses.

Stores and validators raise these; the servicers never build statuses by hand.
Every error carries a google.rpc.ErrorInfo with a stable `reason`, and bad
input a google.rpc.BadRequest naming each offending field.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "featurestore.dev"
_log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: its path (e.g. `feature.tags[2]`) and what is wrong."""

    field: str
    description: str


@dataclass(eq=False)
class ServiceError(Exception):
    """An error to report to the caller as a gRPC status."""

    code: grpc.StatusCode
    reason: str
    message: str
    violations: Sequence[FieldViolation] = field(default_factory=tuple)
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_status(self) -> grpc.Status:
        """The rich status: code, message, ErrorInfo and BadRequest details."""
        status = status_pb2.Status(code=_CODE_VALUES[self.code], message=self.message)
        _pack(status, error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata))
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in self.violations
                ]
            )
            _pack(status, bad)
        return rpc_status.to_status(status)


def _pack(status: status_pb2.Status, detail: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> None:
    packed = any_pb2.Any()
    packed.Pack(detail)
    status.details.append(packed)


_CODE_VALUES = {code: getattr(code_pb2, code.name) for code in grpc.StatusCode}


# Errors travel in gRPC trailers, which peers cap (8 KiB by default): keep them small.
_MESSAGE_VIOLATIONS = 3
_DETAIL_VIOLATIONS = 20
MAX_VIOLATIONS = _DETAIL_VIOLATIONS  # validators stop collecting here: no more would be reported


def invalid_argument(violations: Sequence[FieldViolation]) -> ServiceError:
    """INVALID_ARGUMENT naming the fields: the first few in the message, up to 20 in the details."""
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:_MESSAGE_VIOLATIONS])
    if len(violations) > _MESSAGE_VIOLATIONS:
        summary += f" (and {len(violations) - _MESSAGE_VIOLATIONS} more)"
    detailed = tuple(violations[:_DETAIL_VIOLATIONS])
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", f"invalid request: {summary}", detailed)


def not_found(kind: str, name: str) -> ServiceError:
    """NOT_FOUND for a missing `kind` (e.g. "feature") called `name`."""
    reason = f"{kind.upper().replace(' ', '_')}_NOT_FOUND"
    return ServiceError(grpc.StatusCode.NOT_FOUND, reason, f"{kind} {name!r} not found", metadata={"name": name})


def already_exists(kind: str, name: str) -> ServiceError:
    """ALREADY_EXISTS for a `kind` called `name`."""
    reason = f"{kind.upper().replace(' ', '_')}_ALREADY_EXISTS"
    message = f"{kind} {name!r} already exists"
    return ServiceError(grpc.StatusCode.ALREADY_EXISTS, reason, message, metadata={"name": name})


def etag_mismatch(kind: str, name: str) -> ServiceError:
    """ABORTED: the caller's etag is stale (someone changed the resource)."""
    message = f"{kind} {name!r} was changed by someone else: etag mismatch; read it again and retry"
    return ServiceError(grpc.StatusCode.ABORTED, "ETAG_MISMATCH", message, metadata={"name": name})


def unavailable(what: str, detail: str) -> ServiceError:
    """UNAVAILABLE: a backing store cannot be reached or is not ready; the call may be retried.

    `detail` goes to the client: a short phrase of our own ("timed out"), never a driver's
    message (those name hosts, addresses and exception classes).
    """
    reason = f"{what.upper()}_UNAVAILABLE"
    return ServiceError(grpc.StatusCode.UNAVAILABLE, reason, f"{what} is unavailable ({detail}); retry later")


def resource_exhausted(field_path: str, problem: str) -> ServiceError:
    """RESOURCE_EXHAUSTED: the request is over a configured limit (named in `problem`)."""
    violation = FieldViolation(field_path, problem)
    message = f"request too large: {field_path}: {problem}"
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED", message, (violation,))


# A store's translation of its driver's exceptions; None for an exception it does not know.
Translation = Callable[[Exception], ServiceError | None]
StoreMethod = Callable[P, Coroutine[Any, Any, R]]


def translated(translate: Translation) -> Callable[[StoreMethod[P, R]], StoreMethod[P, R]]:
    """Decorate a store method so that driver errors leave it as ServiceErrors (the store's edge).

    Every store uses this one decorator with its driver's `translate`; the details of a
    translated error are logged here, the client gets only the ServiceError's message.
    """

    def decorate(method: StoreMethod[P, R]) -> StoreMethod[P, R]:
        @functools.wraps(method)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await method(*args, **kwargs)
            except ServiceError:
                raise
            except Exception as exc:
                error = translate(exc)
                if error is None:
                    raise
                _log.warning("%s: %s: %r", method.__qualname__, error.message, exc)
                raise error from exc

        return wrapper

    return decorate
