"""Rich error details of the feature store's gRPC errors."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    call: grpc.Call = error  # type: ignore[assignment]
    details = ErrorDetails(code=call.code(), message=call.details() or "")
    status = rpc_status.from_call(call)
    if status is None:
        return details
    for any_detail in status.details:
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
            details = ErrorDetails(
                details.code, details.message, info.reason, dict(info.metadata), details.field_violations
            )
        elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_detail.Unpack(bad)
            details.field_violations.update({v.field: v.description for v in bad.field_violations})
    return details
