"""The client's exceptions, decoded from the server's rich gRPC statuses.

Every error the server sends is a google.rpc.Status with a google.rpc.ErrorInfo whose
`reason` is stable, and bad input also a google.rpc.BadRequest naming the fields. The
client raises one class per status code (ETAG_MISMATCH gets its own), all subclasses of
`FeatureStoreError`, with the gRPC error as `__cause__`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class ErrorDetails:
    """What a failed call reported: its code, message, stable reason and field violations."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: dict[str, str] = field(default_factory=dict)


def error_details(error: grpc.RpcError) -> ErrorDetails:
    """Decode the google.rpc.Status details carried by a failed call."""
    call: Any = error
    details = ErrorDetails(code=call.code(), message=call.details() or "")
    try:
        status = rpc_status.from_call(call)
    except ValueError:  # a status whose details disagree with its code: keep code and message
        status = None
    if status is None:
        return details
    for any_detail in status.details:
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
            details = replace(details, reason=info.reason, metadata=dict(info.metadata))
        elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_detail.Unpack(bad)
            details.field_violations.update({v.field: v.description for v in bad.field_violations})
    return details


_BY_CODE: dict[grpc.StatusCode, type[FeatureStoreError]] = {}


class FeatureStoreError(Exception):
    """A call failed. `code` is the gRPC status code, `reason` the server's stable ErrorInfo reason.

    `metadata` holds the ErrorInfo's metadata (e.g. `{"name": "..."}`), `field_violations`
    maps each offending request field to what is wrong with it (bad input only).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init_subclass__(cls, *, code: grpc.StatusCode | None = None, **kwargs: Any) -> None:
        """A subclass declared with `code=` is the class raised for that status code."""
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
            _BY_CODE[code] = cls

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.field_violations = dict(field_violations or {})

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name


class InvalidArgument(FeatureStoreError, code=grpc.StatusCode.INVALID_ARGUMENT):
    """The request was refused as bad input; `field_violations` names the fields."""


class NotFound(FeatureStoreError, code=grpc.StatusCode.NOT_FOUND):
    """The feature or group does not exist (reason FEATURE_NOT_FOUND, FEATURE_GROUP_NOT_FOUND)."""


class AlreadyExists(FeatureStoreError, code=grpc.StatusCode.ALREADY_EXISTS):
    """A feature or group of that name exists already."""


class Aborted(FeatureStoreError, code=grpc.StatusCode.ABORTED):
    """The change was aborted, e.g. by a concurrent change."""


class EtagMismatch(Aborted):
    """Someone changed the definition since its etag was read (reason ETAG_MISMATCH): read it again."""


class FailedPrecondition(FeatureStoreError, code=grpc.StatusCode.FAILED_PRECONDITION):
    """The system is not in a state that allows the call (e.g. FEATURE_IN_USE on delete)."""


class ResourceExhausted(FeatureStoreError, code=grpc.StatusCode.RESOURCE_EXHAUSTED):
    """A request, stream or concurrency limit of the server was hit (the message names it)."""


class Unavailable(FeatureStoreError, code=grpc.StatusCode.UNAVAILABLE):
    """The server or one of its stores is unavailable; the call may be retried later."""


class DeadlineExceeded(FeatureStoreError, code=grpc.StatusCode.DEADLINE_EXCEEDED):
    """The call did not finish within its deadline."""


class PermissionDenied(FeatureStoreError, code=grpc.StatusCode.PERMISSION_DENIED):
    """The caller's token is valid but its roles do not allow the call."""


class Unauthenticated(FeatureStoreError, code=grpc.StatusCode.UNAUTHENTICATED):
    """The call carried no valid token while the server requires one."""


def from_rpc_error(error: grpc.RpcError) -> FeatureStoreError:
    """The client exception for a failed gRPC call (raise it `from error`)."""
    details = error_details(error)
    cls = _BY_CODE.get(details.code, FeatureStoreError)
    if details.reason == "ETAG_MISMATCH":
        cls = EtagMismatch
    return cls(
        details.message,
        code=details.code,
        reason=details.reason,
        metadata=details.metadata,
        field_violations=details.field_violations,
    )
