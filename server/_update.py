"""AIP-134 partial updates: apply a message's fields named by a field mask.

Without a mask (or an empty one) the mask is implied: every field the client
set. "*" names every updatable field.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from server.core.errors import FieldViolation, invalid_argument

M = TypeVar("M", bound=Message)


def _paths(patch: Message, mask: field_mask_pb2.FieldMask, updatable: frozenset[str]) -> list[str]:
    if not mask.paths:
        return [fd.name for fd, _ in patch.ListFields() if fd.name in updatable]
    if list(mask.paths) == ["*"]:
        return sorted(updatable)
    return list(mask.paths)


def apply_mask(
    current: M,
    patch: M,
    mask: field_mask_pb2.FieldMask,
    updatable: frozenset[str],
    immutable: frozenset[str],
    prefix: str,
) -> M:
    """`current` with the masked fields of `patch`; fields in `immutable` may be sent but not changed."""
    paths = _paths(patch, mask, updatable | immutable)
    bad = [p for p in paths if p.split(".")[0] not in updatable | immutable]
    descriptor: Any = current.DESCRIPTOR
    if bad or not field_mask_pb2.FieldMask(paths=paths).IsValidForDescriptor(descriptor):
        allowed = ", ".join(sorted(updatable))
        raise invalid_argument(
            [FieldViolation("update_mask", f"cannot update {', '.join(bad or paths)}; updatable: {allowed}")]
        )
    merged = type(current)()
    merged.CopyFrom(current)
    field_mask_pb2.FieldMask(paths=paths).MergeMessage(
        patch, merged, replace_message_field=True, replace_repeated_field=True
    )
    changed = [f for f in sorted(immutable) if getattr(merged, f) != getattr(current, f)]
    if changed:
        raise invalid_argument([FieldViolation(f"{prefix}.{f}", "cannot be changed after creation") for f in changed])
    return merged
